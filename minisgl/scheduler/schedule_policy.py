# ================================================================================
# 📏 调度策略与 prefill 预算（SchedulePolicy + PrefillAdder）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   决定“下一批 prefill 先接谁、接多少”：SchedulePolicy 给等待队列排序（fcfs 先来先服务；
#   lpm 最长前缀优先，缓存命中多的先做）；PrefillAdder 按 token 预算逐个接纳请求，
#   超过块大小的请求被切成块（chunked prefill）。
#   Decides whom the next prefill admits and how much: SchedulePolicy orders the waiting queue
#   (fcfs, or lpm = longest cached prefix first); PrefillAdder admits requests one by one under
#   token budgets, cutting an oversized one into chunks.
#
# 【生活比喻】Metaphor
#   餐厅领班：按规则排队（先来先坐，或先安排“菜已备好一半”的熟客），再看还有几张空桌、
#   后厨还剩多少食材；大宴席分几轮上菜，不让小桌久等（厨房备菜与炒菜交替）。
#   A restaurant host: order the queue, count free tables and what the kitchen can still cook;
#   a banquet is served in rounds so small tables do not wait (prep vs. cooking).
#
# 【核心架构】Architecture
#   waiting_queue ──SchedulePolicy.calc_priority──► 排好序的队列 / ordered queue
#        │
#        ▼ for req in queue:  PrefillAdder.add_one_req(req)
#   ┌──────────────────────────── 预算 budgets ─────────────────────────────┐
#   │ rem_total_tokens = 空闲槽位 + 可驱逐缓存 − 运行中请求预留的输出 − 已接纳   │
#   │ rem_input_tokens = max_prefill_tokens − 已接纳的新 token                 │
#   │ rem_chunk_tokens = chunked_prefill_size − 已接纳的新 token               │
#   └───────────────────────────────────────────────────────────────────────┘
#        ▼
#   can_run_list（本轮 prefill 的请求）+ 可能一个 new_chunked_req
#
# 【工作流程】Workflow
#   1. lpm：对每个等待请求做 match_prefix，按命中长度降序；队列太长（>128）时退回 fcfs，
#      因为每个请求都要查一次树，代价 O(队列长度 × prompt 长度)。
#   2. add_one_req：先锁住它的前缀节点（防止为它腾地方时把它自己的前缀驱逐掉），
#      再检查三项预算；不够则解锁并停止接纳。
#   3. 超过块预算：截成页对齐的一块，标记 is_chunked，本轮到此为止。
#
# 【关键概念】Key Concepts
#   - new_token_ratio：运行中请求未来还要多少 token 只能估计；按剩余 max_new_tokens × ratio 预留。
#     ratio 从 0.7 起每个 decode 步减 0.001 到 0.1；发生 retraction 时重置回 0.7（与 SGLang 相同的思路）。
#     Future output of running requests is reserved as remaining max_new_tokens × ratio.
#   - CLIP_MAX_NEW_TOKENS = 4096：预留时把过大的 max_new_tokens 截断，避免一个请求挡住所有人。
#
# 【使用方式】Usage
#   >>> policy = SchedulePolicy("lpm", tree_cache); policy.calc_priority(waiting_queue)
#   >>> adder = PrefillAdder(...); adder.add_one_req(req)   # → AddReqResult
#
# 【对应章节】Chapter: docs/zh/06-scheduling.md
# ================================================================================
from __future__ import annotations

from enum import Enum, auto
from typing import List, Optional

CLIP_MAX_NEW_TOKENS = 4096
# SGLang 用 128。这里排序只读树（match_prefix_len，切片比较在 C 里做），在本仓库的 2 核 CPU 上 1,024 个 2k token
# 的请求排一次约 11 ms，而且调度器在满员时根本不排序；队列再长才退回 fcfs。
# SGLang uses 128. Here the sort only reads the tree (match_prefix_len, slices compared in C): 1,024
# waiting requests of 2k tokens take ~11 ms on this repo's 2-core CPU, and nothing is sorted while full.
LPM_FALLBACK_QUEUE_LEN = 1024
IN_BATCH_PREFIX_LEN = 32  # 批内去重看的开头长度（同 SGLang 的阈值）/ head length for in-batch dedup (SGLang's threshold)


class SchedulePolicy:
    """给等待队列排序。Orders the waiting queue (fcfs | lpm)."""

    def __init__(self, policy: str, tree_cache, disable_radix_cache: bool = False):
        if policy not in ("fcfs", "lpm"):
            raise ValueError(f"unknown schedule policy {policy!r} (choose fcfs or lpm)")
        self.policy = policy
        self.tree_cache = tree_cache
        self.disable_radix_cache = disable_radix_cache

    def calc_priority(self, waiting_queue: List) -> str:
        """原地排序，返回实际使用的策略。Sort in place; return the policy actually used."""
        # >>> ASSIGNMENT schedule_policy: calc_priority
        if self.policy == "fcfs" or self.disable_radix_cache or len(waiting_queue) > LPM_FALLBACK_QUEUE_LEN:
            return "fcfs"  # 保持到达顺序 / keep arrival order
        prefix_len = {}
        for req in waiting_queue:
            # 最后一个 token 必须进模型：至多匹配 len-1 个（同 init_next_round_input）；只要长度，树不改、key 不复制。
            # The last token must go through the model, so at most len-1 tokens match (as in
            # init_next_round_input); only the length is needed, so the tree is only read.
            ids = req.token_ids if req.output_ids else req.origin_input_ids  # 等待中的请求多半还没有输出 / mostly no output yet
            prefix_len[req.rid] = self.tree_cache.match_prefix_len(ids, namespace=req.lora_id, max_len=len(ids) - 1)
        # sort 是稳定的：命中相同则保持到达顺序。A stable sort keeps arrival order among ties.
        waiting_queue.sort(key=lambda r: -prefix_len[r.rid])
        return "lpm"
        # <<< ASSIGNMENT


def prompt_head(req) -> tuple:
    """请求的开头（连同 LoRA 命名空间：不同适配器的 KV 不能共享）。A request's head, with its LoRA namespace."""
    return (req.lora_id, tuple(req.token_ids[:IN_BATCH_PREFIX_LEN]))


def wait_for_shared_prefix(req, chunked_req, admitted_heads: set) -> bool:
    """lpm 的批内去重：这个请求等一轮是否更划算？In-batch dedup for lpm: should req wait one round?

    req 已做过 init_next_round_input。两种情况下，它的前缀马上就会被别人算进树里，现在接纳只会把同一段再算一遍：
      1. 它的缓存前缀正好停在分块 prefill 停下的节点：多半是同一段系统提示，下一块算完就能接着命中。
      2. 它几乎没命中（< IN_BATCH_PREFIX_LEN），而本轮已接纳的某个请求与它开头相同：那个请求 prefill 完，前缀就在树里了。
    等待是有界的：只在本轮有人被接纳（或分块请求在跑）时才等，所以总有进展。
    req has been through init_next_round_input. In two cases someone else is about to put its prefix in
    the tree, and admitting it now would compute that prefix twice:
      1. its cached prefix ends exactly at the node where a chunked prefill stopped (most likely the same
         system prompt: after the next chunk it matches further);
      2. it matched almost nothing and a request admitted this round starts with the same tokens.
    The wait is bounded: it only happens while someone is admitted this round or a chunk is in flight.
    """
    if chunked_req is not None and len(req.prefix_indices) and req.last_node is chunked_req.last_node:
        return True
    return (len(req.prefix_indices) < IN_BATCH_PREFIX_LEN < len(req.token_ids)
            and prompt_head(req) in admitted_heads)


class AddReqResult(Enum):
    CONTINUE = auto()  # 还能继续接纳 / room for more
    NO_TOKEN = auto()  # KV 内存不够 / out of KV memory
    OTHER = auto()  # 其他预算用完（prefill token、块大小）/ another budget is spent


class PrefillAdder:
    """按预算接纳请求（见文件头）。Admits requests under token budgets; see the file header."""

    def __init__(
        self,
        tree_cache,
        allocator,
        running_reqs: List,
        new_token_ratio: float,
        max_prefill_tokens: int,
        chunked_prefill_size: Optional[int],
        page_size: int,
    ):
        self.tree_cache = tree_cache
        self.allocator = allocator
        self.page_size = page_size
        self.rem_input_tokens = max_prefill_tokens
        self.rem_chunk_tokens = chunked_prefill_size if chunked_prefill_size and chunked_prefill_size > 0 else None
        # 运行中请求将来还要的 token（估计值）。Future tokens of running requests (an estimate).
        self.rem_total_token_offset = sum(
            min(r.sampling_params.max_new_tokens - len(r.output_ids), CLIP_MAX_NEW_TOKENS) * new_token_ratio
            + page_size
            for r in running_reqs
        )
        self.can_run_list: List = []
        self.new_chunked_req = None

    @property
    def rem_total_tokens(self) -> float:
        return (self.allocator.available_size() + self.tree_cache.evictable_size()
                - self.rem_total_token_offset)

    def _admit(self, req, extend_len: int, reserve_output: int) -> None:
        self.can_run_list.append(req)
        self.rem_total_token_offset += extend_len + reserve_output + self.page_size
        self.rem_input_tokens -= extend_len
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= extend_len

    def _chunk_len(self) -> int:
        return self.rem_chunk_tokens // self.page_size * self.page_size

    def add_chunked_req(self, req) -> None:
        """继续一个分块中的请求（它的前缀已被锁住）。Continue a chunked request (its prefix is locked)."""
        req.fill_ids = req.token_ids
        req.extend_input_len = len(req.fill_ids) - len(req.prefix_indices)
        if self.rem_chunk_tokens is not None and req.extend_input_len > self.rem_chunk_tokens:
            req.extend_input_len = self._chunk_len()
            req.fill_ids = req.fill_ids[: len(req.prefix_indices) + req.extend_input_len]
            req.is_chunked = True
        else:
            req.is_chunked = False
        self._admit(req, req.extend_input_len, 0)

    def add_one_req(self, req) -> AddReqResult:
        """尝试接纳一个已做过 init_next_round_input 的请求。Try to admit one prepared request."""
        # >>> ASSIGNMENT schedule_policy: add_one_req
        reserve = min(req.sampling_params.max_new_tokens - len(req.output_ids), CLIP_MAX_NEW_TOKENS)
        # 先锁：为它腾内存时不能驱逐它要复用的前缀。Lock first: making room must not evict its own prefix.
        self.tree_cache.inc_lock_ref(req.last_node)
        if req.extend_input_len + reserve + self.page_size > self.rem_total_tokens:
            self.tree_cache.dec_lock_ref(req.last_node)
            return AddReqResult.NO_TOKEN
        if self.can_run_list and req.extend_input_len > self.rem_input_tokens:
            self.tree_cache.dec_lock_ref(req.last_node)
            return AddReqResult.OTHER
        if self.rem_chunk_tokens is None or req.extend_input_len <= self.rem_chunk_tokens:
            self._admit(req, req.extend_input_len, reserve)
            return AddReqResult.CONTINUE if self.rem_input_tokens > 0 else AddReqResult.OTHER
        # ======== 切块 / Chunk it ========
        trunc = self._chunk_len()
        if trunc <= 0:
            self.tree_cache.dec_lock_ref(req.last_node)
            return AddReqResult.OTHER
        req.extend_input_len = trunc
        req.fill_ids = req.fill_ids[: len(req.prefix_indices) + trunc]
        req.is_chunked = True
        self.new_chunked_req = req
        self._admit(req, trunc, 0)
        return AddReqResult.OTHER
        # <<< ASSIGNMENT

    def force_add(self, req) -> None:
        """队列空转时强行接纳队首（只要它的输入放得下）。Admit the head when nothing else runs."""
        self.tree_cache.inc_lock_ref(req.last_node)
        if self.rem_chunk_tokens is not None and req.extend_input_len > self.rem_chunk_tokens:
            req.extend_input_len = self._chunk_len()
            req.fill_ids = req.fill_ids[: len(req.prefix_indices) + req.extend_input_len]
            req.is_chunked = True
            self.new_chunked_req = req
        self._admit(req, req.extend_input_len, 0)
