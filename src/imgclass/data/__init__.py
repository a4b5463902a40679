"""The one path every command uses: find files -> split (saved) -> decode to RGB ->
resize policy -> uint8 tensors -> batch augmentation -> model."""
