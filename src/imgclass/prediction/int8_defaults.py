"""The int8 export's defaults, light to import: the quantizer (quantize.py) and the command line's help read them
here (`imgclass export --help` loads no torch)."""
CALIBRATION_IMAGES = 300  # training images the activation ranges are calibrated on (NNCF's default subset size)
MAX_ACCURACY_DROP = 1.0   # points of test score an int8 export may lose (--max-accuracy-drop)
