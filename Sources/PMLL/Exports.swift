// The facade: `import PMLL` brings the whole public API of every layer.
@_exported public import PMLLCore
@_exported public import PMLLFileBatches
@_exported public import PMLLLocks
@_exported public import PMLLQueues
@_exported public import PMLLStore
