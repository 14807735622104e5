# ================================================================================
# 📚 课程作业登记表（Assignment registry）
# ================================================================================
#
# 【这个文件是什么】What This File Does
#   列出课程的六个作业：每个作业改引擎里的哪一个文件、哪几段（用标记圈出的“答案区”）、
#   每段的提示、对应哪一章、评分测试放在哪里。skeleton.py 和 grader.py 都从这里读。
#   Lists the six course assignments: which engine file each one is about, which marked
#   solution regions the student rewrites, a hint per region, the chapter, and where the
#   grading tests live. skeleton.py and grader.py both read it.
#
# 【生活比喻】Metaphor
#   教务处的课程表：哪门课、哪间教室（文件）、哪几道题（区域）、去哪里交卷（评分测试）。
#   The registrar's timetable: which course, which room (file), which questions (regions),
#   where to hand in (the grading tests).
#
# 【核心架构】Architecture
#   ASSIGNMENTS: Dict[name, Assignment]
#     Assignment ─ module      "minisgl.mem_cache.radix_cache"   （引擎模块 / engine module）
#                ─ source      minisgl/mem_cache/radix_cache.py  （带标记的真实源码 / marked source）
#                ─ regions     {"match_prefix": 提示 hint, ...}   （与源码里的标记一一对应）
#                ─ folder      learning_guide/assignments/<name>/ （README.md + grade.py）
#
# 【工作流程】Workflow
#   1. 讲师在引擎源码里用 `# >>> ASSIGNMENT <name>: <region>` … `# <<< ASSIGNMENT` 圈出答案。
#   2. 在这里登记作业和每段的提示。Register the assignment and a hint per region here.
#   3. `minisgl course start <name>` 用 skeleton.py 生成起始代码；`grade` 用 grader.py 评分。
#
# 【关键概念】Key Concepts
#   - 起始代码永远由真实源码生成，所以不会和引擎走样。The starter is always generated from
#     the real source, so it never drifts from the engine.
#   - 评分测试需要源码目录（learning_guide/ 在仓库根目录，`pip install -e .` 的安装方式）。
#     Grading needs a source checkout (learning_guide/ sits at the repository root).
#
# 【使用方式】Usage
#   >>> from minisgl.course.assignments import get_assignment
#   >>> a = get_assignment("radix_cache"); a.source_path, list(a.regions)
#   $ minisgl course list
#
# 【对应章节】Chapter: docs/zh/assignments/index.md
# ================================================================================
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # minisgl/
REPO_ROOT = PACKAGE_ROOT.parent
ASSIGNMENTS_DIR = REPO_ROOT / "learning_guide" / "assignments"


@dataclass(frozen=True)
class Assignment:
    """一个作业。One assignment."""

    name: str
    title_zh: str
    title_en: str
    module: str  # 引擎模块名 / the engine module the student rewrites
    chapter: str  # docs/zh/ 下的章节文件 / chapter page under docs/zh/
    regions: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # 区域 → (提示, hint)
    needs_triton: bool = False

    @property
    def source_path(self) -> Path:
        """引擎里带标记的源文件。The marked engine source file."""
        return REPO_ROOT / (self.module.replace(".", "/") + ".py")

    @property
    def file_name(self) -> str:
        """学生文件名（与引擎文件同名）。The student's file name (same as the engine's)."""
        return self.source_path.name

    @property
    def folder(self) -> Path:
        return ASSIGNMENTS_DIR / self.name

    @property
    def grade_file(self) -> Path:
        return self.folder / "grade.py"


_A = Assignment
# 提示 = (中文, English)：skeleton.py 把它写进起始代码的 TODO 注释。Hints go into the starter's TODO comment.
ASSIGNMENTS: Dict[str, Assignment] = {a.name: a for a in [
    _A("paged_allocator", "分页 KV 分配器", "The paged KV allocator", "minisgl.mem_cache.memory_pool",
       "08-kv-cache.md", {
           "alloc_extend": ("先数每个请求要几个新页（向上取整的页数之差），不够就返回 None 且什么都不拿；再逐个请求："
                            "先填满上一页剩下的空位（从 last_loc+1 起），再用整页。",
                            "Count the new pages (difference of rounded-up page counts); return None and take "
                            "nothing when short. Then per request fill the rest of its last page (from "
                            "last_loc+1), then whole new pages."),
           "free": ("按页回收：槽位 // page_size 得到页号，每一页只能放回一次。",
                    "Free by page: slot // page_size gives the page; put each page back exactly once."),
       }),
    _A("radix_cache", "基数树前缀缓存", "The radix prefix cache", "minisgl.mem_cache.radix_cache",
       "08-kv-cache.md", {
           "match_prefix": ("按页对齐 key，从根往下走：_child_key 找孩子，_match_len 算公共长度，停在节点中间就 "
                            "_split_node；沿路更新 last_access_time，拼接各节点的 value。",
                            "Page-align the key and walk down from the root: _child_key finds the child, "
                            "_match_len the common length, _split_node when the match ends inside a node; touch "
                            "last_access_time on the way and concatenate the values."),
           "insert": ("像 match_prefix 一样往下走并累计已有的前缀长度；剩下的 key 挂成新叶子，evictable_size_ 增加。",
                      "Walk down like match_prefix, counting the cached prefix; hang the rest of the key as a "
                      "new leaf and grow evictable_size_."),
           "evict": ("只从 lock_ref == 0 的叶子里按 last_access_time 最小（LRU）先弹出（heapq）；释放槽位、删节点，"
                     "父节点变成未锁的叶子就放回堆。",
                     "Pop unlocked leaves, oldest last_access_time first (heapq); free their slots, unlink them, "
                     "and push a parent that has become an unlocked leaf."),
       }),
    _A("schedule_policy", "prefill 预算与 LPM 策略", "The prefill budget and the LPM policy",
       "minisgl.scheduler.schedule_policy", "06-scheduling.md", {
           "calc_priority": ("fcfs、关闭 radix 或队列长于 LPM_FALLBACK_QUEUE_LEN 时不动队列，返回 'fcfs'；否则对每个请求 "
                             "tree_cache.match_prefix_len(token_ids, max_len=len-1)，按命中长度降序稳定排序，返回 'lpm'。",
                             "Keep the order and return 'fcfs' for fcfs, a disabled radix cache or a queue longer "
                             "than LPM_FALLBACK_QUEUE_LEN; else sort stably by "
                             "tree_cache.match_prefix_len(token_ids, max_len=len-1), longest first, and return 'lpm'."),
           "add_one_req": ("先 inc_lock_ref(req.last_node) 再查预算：总 token（NO_TOKEN）、prefill token（OTHER，"
                           "第一个请求除外）、块大小（切成页对齐的一块，is_chunked，new_chunked_req）；不接纳就解锁。",
                           "Lock first, then check the total budget (NO_TOKEN), the input budget (OTHER, never for "
                           "the first request) and the chunk budget (cut a page-aligned chunk); unlock on refusal."),
       }),
    _A("sampler", "采样：惩罚与 top-k/top-p/min-p", "Sampling: penalties and top-k/top-p/min-p",
       "minisgl.sampling.sampler", "09-sampling.md", {
           "apply_penalties": ("逐行：frequency/presence 用已生成 token 的计数；repetition 作用于 prompt+输出里出现过的 "
                               "token（l>0 除以 r，否则乘 r）；未到 min_new_tokens 时 EOS 和 stop_token_ids 设为 -inf。",
                               "Per row: frequency/presence from the output counts; repetition on every token seen "
                               "in prompt + output (divide positives, multiply negatives); -inf for EOS and stop ids "
                               "before min_new_tokens."),
           "top_k_top_p_min_p_filter": ("降序排序；top-k 保留前 k 个；top-p 丢掉“它之前的累计概率已 ≥ p”的 token；"
                                        "min-p 丢掉 < min_p × 最大概率的；第一个永远保留；scatter 回原位并重新归一化。",
                                        "Sort descending; top-k keeps k; top-p drops a token once the mass before "
                                        "it reaches p; min-p drops probs < min_p * max; always keep the first; "
                                        "scatter back and renormalise."),
       }),
    _A("decode_attention", "Triton decode 注意力内核", "The Triton decode-attention kernel",
       "minisgl.runner.attention.triton_ops.decode_attention", "07-model-inference.md", {
           "stage1_loop": ("for start_n in range(split_start, split_end, BLOCK_N)：经 kv_indices 查槽位，gather K（转置）"
                           "和 V，qk = tl.dot(q, k) * sm_scale（可选 logit cap），越界置 -inf，再按文件头的公式做"
                           "在线 softmax，更新 e_max、e_sum、acc。",
                           "Loop over BLOCK_N tokens of this split: slots through kv_indices, gather K (transposed) "
                           "and V, qk = tl.dot(q, k) * sm_scale (+ logit cap), -inf out of range, then the "
                           "online-softmax update of e_max, e_sum and acc (formulas in the header)."),
           "stage2_merge": ("for split_id in range(0, kv_splits)：复算段边界并跳过空段；读局部输出和 lse，按 "
                            "log-sum-exp 合并进 acc、e_sum、e_max。",
                            "Loop over the splits: recompute the bounds as stage 1 did and skip empty ones; load "
                            "each partial output and lse and merge them by log-sum-exp into acc, e_sum, e_max."),
       }, needs_triton=True),
    _A("detokenizer", "增量反分词与 stop 字符串", "Incremental detokenization and stop strings",
       "minisgl.detokenizer", "05-tokenization.md", {
           "append": ("解码 ids[surr:read] 和 ids[surr:]，差就是新文字；新文字以 \\ufffd 结尾（半个字符）时返回 ''、"
                      "偏移不动；否则追加到 self.text，surr/read 前移。",
                      "Decode ids[surr:read] and ids[surr:]; the difference is the new text. If it ends in "
                      "\\ufffd (half a character) return '' and keep the offsets; else append it to self.text "
                      "and move surr/read forward."),
           "take": ("结束且命中 stop 串：把 self.text 裁到它第一次出现之前；运行中：扣住 _partial_stop_len 个字符的尾巴；"
                    "返回 self.text[self.sent:end] 并前移 self.sent。",
                    "Finished with a matched stop string: cut self.text before its first occurrence. Running: "
                    "hold back _partial_stop_len characters. Return self.text[self.sent:end] and advance "
                    "self.sent."),
           "partial_stop_len": ("对每个 stop 串：已完整出现 → 扣住从它开始的全部；否则找最长的 k 使 text 以 s[:k] "
                                "结尾；返回最大值。",
                                "Per stop string: a full occurrence holds back everything from it; else the "
                                "longest k with text ending in s[:k]. Return the maximum."),
       }),
]}


def get_assignment(name: str) -> Assignment:
    """按名字取作业，名字错时报出可选的名字。Look one up; a wrong name lists the choices."""
    if name not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {name!r}; choose one of: {', '.join(ASSIGNMENTS)}")
    return ASSIGNMENTS[name]


def names() -> List[str]:
    return list(ASSIGNMENTS)
