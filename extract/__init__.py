"""Stage one: the frozen encoder over a dataset, once, into a cache. Calling this package runs
`pipeline.extract(dataset, config)`."""

from ytune import _stage

_stage(__name__, "ytune.extract.pipeline", "extract")
