"""models/inference.py: scoring batches bounded in pixels per forward pass, TTA's copies counted."""
import torch

from imgclass.data.preprocess import Preprocessing
from imgclass.models import create_model
from imgclass.models import inference
from imgclass.models.inference import predict_logits, scoring_batch
from imgclass.models.tta import TTA_WIDEST, tta_logits


def test_a_scoring_pass_holds_about_a_million_pixels_with_tta_copies_counted():
    cpu = torch.device("cpu")
    assert scoring_batch(1024, 32, cpu) == 1024
    assert scoring_batch(1024, 32, cpu, "flip") == 512
    assert scoring_batch(1024, 32, cpu, "flip_translate") == 256      # its widest pass holds 4 copies of each
    assert scoring_batch(100, 32, cpu, "flip_translate") == 100         # never more than asked
    assert scoring_batch(64, 260, cpu, "flip_translate") == 8           # at least 8
    assert scoring_batch(1024, 32, torch.device("meta"), "flip_translate") == 1024  # not a CPU: as asked


def test_predict_logits_passes_at_most_a_million_pixels_and_answers_as_one_batch_does(monkeypatch):
    torch.manual_seed(0)
    model = create_model("fast", num_classes=3, width=8).eval()
    images = torch.randint(0, 256, (600, 3, 32, 32), dtype=torch.uint8)
    pre = Preprocessing(img_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    seen = []
    real = inference.tta_logits

    def counted(m, x, mode):
        seen.append(len(x) * TTA_WIDEST[mode] * x.shape[-1] * x.shape[-2])
        return real(m, x, mode)
    monkeypatch.setattr(inference, "tta_logits", counted)
    out = predict_logits(model, images, pre, 1024, torch.device("cpu"), "flip_translate")
    assert max(seen) <= 2**20 and len(seen) == 3                       # 256 + 256 + 88 images
    with torch.no_grad():
        whole = tta_logits(model, pre.normalize(images), "flip_translate")
    assert torch.allclose(out, whole, atol=1e-4, rtol=1e-4)            # float32 across batch sizes
