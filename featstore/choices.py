"""The vocabularies of featstore's options, in one place and importable without torch.

The stages validate against these tuples; the CLI turns them into enums, so ``--help``
lists the choices.
"""

TASKS = ("binary", "multiclass", "ordinal", "multilabel")
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = ("float32", "float16")
ON_ERROR = ("fail", "skip")
PROBES = ("linear", "knn")
ORDINAL_DECODES = ("argmax", "expected")
ATTENTIONS = ("softmax", "sigmoid", "uniform")
# Pixels an image file may declare before it is refused as unreadable (PIL's own
# decompression-bomb threshold, 2 x 89,478,485).
DEFAULT_MAX_PIXELS = 178_956_970
# Where a fixed-size array source (MedMNIST, PCam) is resized: auto = on the GPU when
# extracting on CUDA, else by PIL in the loader workers.
RESIZES = ("auto", "cpu", "device")
