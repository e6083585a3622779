"""The bottom layer, which every other uses and which imports none of them: strict checks of what
users hand to the public API (and ``InvalidInputError``), video decoding and frame sampling, and the
versions of torch / transformers / TransformerLens this package was tested with."""
