"""Defaults of the encoder, and choices of the training commands, that the command line shows,
kept apart from the modules that need torch so that ``vqcodec --help`` starts in a fraction of
a second."""

#: The preset ``load()`` picks when none is named.
DEFAULT_PRESET = "medium"
#: The encoder's default trade of quality for rate (0: always the nearest code).
DEFAULT_RDO = 0.2
#: Side of the regions the priors code independently, in top-map codes (bottom regions are twice
#: as large). Smaller tiles decode faster (more positions per wavefront) and cost some context.
DEFAULT_TILE = 16
#: torch threads of the command line: the VQ-VAE runs on one thread anyway (its results must not
#: depend on the thread count), and on a busy 2-core machine two threads ran the priors 5 to 8
#: times slower than one.
DEFAULT_THREADS = 1
#: Bounds of the resampling factor (``Codec(scale=...)``): coding an upsampled copy raises the
#: rate and the quality, a downsampled one lowers them; beyond these the time or the loss of
#: detail outgrows the gain.
MIN_SCALE, MAX_SCALE = 0.25, 2.0
#: The VQ-VAE runs on windows of WINDOW x WINDOW top codes, each with WINDOW_MARGIN codes of
#: context on every side (more than its receptive field), so memory stays bounded without seams.
#: Margins are work done twice, so windows are large, and an image whose top map is at most
#: WHOLE_WINDOW codes on each side is one window; larger ones would leave a second thread idle
#: on a megapixel photo and make a small region of a large image decode the codes and synthesise
#: the pixels of a larger window (docs/design.md, "Constants").
WINDOW = 64
WINDOW_MARGIN = 6
WHOLE_WINDOW = 96
#: Rows (positions) the integer prior handles at once on a GPU (``qprior``; fewer on the CPU).
DEVICE_ROW_CHUNK = 8192
#: How the training crops of the VQ-VAE and the synthesis draw their images
#: (``training.data.CropSampler``): by area (every pixel alike) or every image alike, so that a
#: few large photos do not outweigh many small ones.
WEIGHINGS = ("area", "image")
#: The copies of each training photo whose maps the priors may learn besides its own
#: (``training.data.variants``): mirrored left to right, and shifted by half a bottom code.
AUGMENTS = ("mirror", "shift")
