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
OPTIMIZERS = ("adamw", "sgd")  # finetuning (timm's create_optimizer_v2 names)
INIT_HEADS = ("fresh", "probe")  # finetuning: a new head, or the cached linear probe (LP-FT)
# Pixels an image file may declare before it is refused as unreadable (PIL's own
# decompression-bomb threshold, 2 x 89,478,485).
DEFAULT_MAX_PIXELS = 178_956_970
# Where a fixed-size array source (MedMNIST, PCam) is resized: auto = on the GPU when
# extracting on CUDA, else by PIL in the loader workers.
RESIZES = ("auto", "cpu", "device")
# Where JPEG files are decoded: cpu = PIL in the loader workers (reduced DCT scale for large
# JPEGs); device = torchvision's decode_jpeg where the model runs (nvJPEG on CUDA), in full
DECODES = ("cpu", "device")
# The probes' default grids (part of every run's id: keep their exact values)
# np.logspace(-6, 4, 11) as floats, written out (its 1e-5 is 9.999999999999999e-06), so the
# CLI loads without numpy and run ids stay those of runs persisted before
DEFAULT_L2_GRID = (1e-06, 9.999999999999999e-06, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0,
                   1000.0, 10000.0)
DEFAULT_TOL = 1e-4
# The linear probe's solver (featstore.probe._lbfgs), part of the id and configuration of
# every run that fits one (linear probes; fusion runs, whose heads and baselines start from
# one): a solver that computes other numbers gets a new name, so runs of the old one are
# never read back as the new one's, nor averaged with them as seeds. 2: row-space
# coordinates for fewer rows than dimensions, float64 line search (before it, up to 84% of a
# weak-L2 probe's weights on 55 rows x 512 dims lay where the training rows say nothing).
# 3: the preconditioner's covariance sample holds at least 4 rows a dimension (8,192 rows
# for 8,576 dims left weak-L2 problems unconverged after 500 iterations), a streamed
# design's summed a block at a time.
LINEAR_SOLVER = "lbfgs-v3"
# The DVME head's version (featstore.fusion.dvme), part of every DVME run's id, so that the
# fusion stage can key its runs without importing torch. 1: scorer on the raw projections,
# random start; 2: one head from a random start; 3: that head or the concat start, chosen on
# val; 4: the concat start's attention is each backbone's share of the probe's evidence;
# 5: the random start begins at that prior too and must beat the concat start by val's noise;
# 6: the concat start is the concat baseline's probe (on the embeddings as given), fitted once
HEAD_VERSION = 6
# How a binary run turns probabilities into the labels its accuracy, balanced accuracy and
# F1 score: the threshold that maximises balanced accuracy on val (Youden's J), part of the
# id and configuration of every binary run (probe, fusion, finetuning). Before it, 0.5: a
# strongly regularised probe chosen on a flat val AUC could output ~0.5 for every row and
# predict one class (accuracy 0.50 at AUC 0.93).
THRESHOLD_RULE = "val-youden"
DEFAULT_KS = (10, 20, 50, 100, 200)
# Seeds of one grid at most: a study uses 3 to 10; a typo of 1e9 must not build a 1e9 list
MAX_SEEDS = 1000
# Upper bounds of the options whose typo (an extra 000) would allocate or run without end;
# each far above any use (the defaults: bootstrap 1000, dim 256, k 200, batches 32 to 64)
MAX_BOOTSTRAP = 100_000  # resamples of a test metric's CI
MAX_DIM = 65_536  # DVME's projection width
MAX_K = 10_000  # a kNN probe's neighbours (val rows x k similarities are kept)
MAX_BATCH = 65_536  # images per forward pass or step
MAX_WORKERS = 256  # DataLoader worker processes
MAX_EPOCHS = 10_000
MAX_SHARD_ROWS = 1_000_000  # rows a shard holds in memory before it is written
MAX_IMAGE_SIZE = 8192  # pixels a side fed to a backbone
MAX_JOBS = 256  # processes of a local pipeline run
