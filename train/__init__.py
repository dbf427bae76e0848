"""Stage two: label heads trained on a cache, without the encoder. Calling this package runs
`trainer.train(cache, specs, config, out)`."""

from ytune import _stage

_stage(__name__, "ytune.train.trainer", "train")
