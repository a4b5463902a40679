import pytest
import yaml

from imgclass.training import config
from imgclass.core.errors import UserError


def test_defaults_then_file_then_options(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.01\nmodel: cnn\n")
    cfg = config.resolve(f, lr=0.5)
    assert cfg.epochs == 7            # from the file
    assert cfg.lr == 0.5              # the option wins over the file
    assert cfg.model == "cnn"
    assert cfg.batch_size == config.TrainConfig().batch_size  # default


def test_unknown_key_is_rejected_with_suggestion(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epocs: 3\n")
    with pytest.raises(UserError, match="unknown config key 'epocs'.*did you mean 'epochs'"):
        config.resolve(f)


@pytest.mark.parametrize("key,value,msg", [("epochs", "many", "integer"), ("augment", "wild", "one of"),
                                           ("lr", -1, "positive"), ("val_split", 0.95, r"\[0, 1\)|sum")])
def test_bad_values(key, value, msg):
    with pytest.raises(UserError, match=msg):
        config.resolve(**{key: value})


def test_save_round_trip(tmp_path):
    cfg = config.resolve(epochs=3, model_args={"width": 16})
    config.save(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model_args"] == {"width": 16}
    assert config.resolve(tmp_path / "config.yaml") == cfg


def test_paths_are_taken_as_strings(tmp_path):
    """Python callers pass pathlib.Path for files and folders; the resolved config (and its YAML) holds strings."""
    cfg = config.resolve(weights=tmp_path / "model.safetensors", out=tmp_path / "run", labels=tmp_path / "l.csv")
    assert cfg.weights == str(tmp_path / "model.safetensors") and cfg.out == str(tmp_path / "run")
    config.save(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["labels"] == str(tmp_path / "l.csv")
    with pytest.raises(UserError, match="must be a string"):
        config.resolve(out=["a", "b"])
