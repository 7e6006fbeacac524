"""Dataset manifests, CoOp-layout loaders, the few-shot and base/novel protocol; toyworld."""
