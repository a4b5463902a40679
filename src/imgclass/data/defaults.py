"""The data layer's limits and thresholds that options show as defaults, light to import (the command line's
requests read them here: `imgclass --help` loads no numpy or Pillow)."""

# The image formats imgclass decodes, everywhere (training, predict, shards, Ray, the service, thumbnails): those of
# the file extensions it looks for (data/find.py); camera JPEGs with a second picture (MPO) open through JPEG's
# opener. Pillow opens dozens
# more (EPS runs Ghostscript where it is installed; PSD, FITS, ...): a file of another format, whatever its name,
# is refused with its reason.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
VAL_SPLIT = 0.1         # share of each class held out for validation when the layout gives no val folder
TEST_SPLIT = 0.1        # ... and for the test when it gives no test folder
SPLIT_SEED = 101        # the seed of that split (train's --seed, which seeds the rest of a run too)
DEFAULT_MAX_PIXELS = 89_478_485  # pixels an image's header may claim: Pillow's own warning threshold
NEAR_DISTANCE = 3        # perceptual-hash Hamming distance (of 64 bits) that counts as a near duplicate
# check --embeddings: the cosine similarity of pooled features at which two images count as near-duplicates.
# Measured (then on mutual nearest neighbours; since issue 40 every pair among each image's 8 nearest counts) with EfficientNet-Lite0's ImageNet features (2026-12-02, 40 planted
# copies: 80% centre crops and 3/4-size JPEG q60 re-encodes): at 0.90 hymenoptera finds 58% of the copies and flags
# no distinct pair; on fashion_hier's product photos (white backgrounds) 68% of the copies, but 33% of the images
# also have a different product above 0.90 (5% above 0.95). No threshold separates them there: the pairs are listed
# most similar first.
NEAR_COSINE = 0.90
