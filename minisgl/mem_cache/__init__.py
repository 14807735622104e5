"""KV cache 内存管理。KV-cache memory: pools, allocator, prefix caches (chapter 08)."""
from minisgl.mem_cache.chunk_cache import ChunkCache
from minisgl.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool, TokenToKVPoolAllocator
from minisgl.mem_cache.radix_cache import RadixCache, TreeNode

__all__ = ["ChunkCache", "RadixCache", "ReqToTokenPool", "TokenToKVPool", "TokenToKVPoolAllocator", "TreeNode"]
