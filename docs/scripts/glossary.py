"""术语表的唯一来源：生成 docs/zh/10-glossary.md 与 docs/en/10-glossary.md。

The single source of the glossary: writes docs/zh/10-glossary.md and docs/en/10-glossary.md.

    python docs/scripts/glossary.py

Each term is (中文, English, 中文解释, English explanation, link). A link is relative to the glossary page:
an API anchor (``api/scheduler.md#minisgl...``), a chapter (``06-scheduling.md``) or "" for none.
tests/test_docs.py checks that the two pages equal what this script renders, that there are at least 200
terms, and (like every page) that each link resolves.
"""
from __future__ import annotations

from pathlib import Path

S = "api/scheduler.md#minisgl.scheduler."
M = "api/mem_cache.md#minisgl.mem_cache."
SA = "api/sampling.md#minisgl.sampling."
R = "api/runner.md#minisgl.runner."
MO = "api/model.md#minisgl.model."
E = "api/engine.md#minisgl."
T = "api/tokenization.md#minisgl."

SECTIONS = [
    ("基础概念", "Basics", [
        ("大语言模型", "large language model (LLM)", "在大量文本上训练、按上文预测下一个 token 的神经网络。", "A neural network trained on large text corpora to predict the next token from what came before.", "01-overview.md"),
        ("推理", "inference", "用训练好的模型产生输出（不再更新权重）。", "Using a trained model to produce outputs, without updating its weights.", "01-overview.md"),
        ("推理引擎", "inference engine", "把模型变成服务的软件：调度、内存管理、批处理、流式输出。", "Software that turns a model into a service: scheduling, memory management, batching, streaming.", "01-overview.md"),
        ("自回归生成", "autoregressive generation", "每一步生成的 token 作为下一步的输入。", "Each generated token becomes part of the next step's input.", "01-overview.md"),
        ("词元", "token", "模型处理的最小单位：一个整数 id，对应一段字节或文字。", "The unit a model works on: an integer id standing for a piece of bytes or text.", "05-tokenization.md"),
        ("词表", "vocabulary (V)", "所有 token 的集合；Qwen3 的词表大小 V = 151,936。", "The set of all tokens; Qwen3's vocabulary size V is 151,936.", MO + "config.ModelConfig"),
        ("提示词", "prompt", "用户给模型的输入文字或 token。", "The input text or tokens given to the model.", ""),
        ("补全", "completion", "模型在提示词之后生成的部分。", "What the model generates after the prompt.", ""),
        ("上下文长度", "context length", "一个序列（提示词 + 输出）最多能有多少 token。", "The most tokens one sequence (prompt + output) may hold.", MO + "config.ModelConfig"),
        ("对数几率", "logits", "模型对每个候选 token 打的未归一化分数，长度为 V。", "The model's unnormalised score for every candidate token, a vector of length V.", "09-sampling.md"),
        ("概率分布", "probability distribution", "softmax(logits)：所有 token 的概率，和为 1。", "softmax(logits): a probability for every token, summing to 1.", "09-sampling.md"),
        ("前向传播", "forward pass", "把一批输入送过模型一次，得到隐藏状态和 logits。", "Running one batch of inputs through the model to get hidden states and logits.", R + "model_runner.ModelRunner.forward"),
        ("权重", "weights / parameters", "模型训练得到的数值；推理时只读。", "The numbers learned in training; read-only during inference.", MO + "loader.load_model"),
        ("检查点", "checkpoint", "保存在磁盘上的模型：config.json + 权重文件 + 分词器。", "A model saved on disk: config.json + weight files + tokenizer.", MO + "loader.load_model"),
        ("Hugging Face 模型目录", "Hugging Face model folder", "HF 格式的检查点目录，minisgl 用 --model-path 读取。", "A checkpoint folder in HF layout, read by minisgl through --model-path.", E + "server_args.ServerArgs"),
        ("安全张量格式", "safetensors", "一种只存张量、可按需读取（mmap）的权重文件格式。", "A weight file format holding only tensors, readable lazily (mmap).", MO + "loader.load_model"),
        ("精度 / 数据类型", "dtype", "数字的存储格式：float32、bfloat16、float16。", "How numbers are stored: float32, bfloat16, float16.", E + "server_args.ServerArgs.dtype"),
        ("脑浮点 16", "bfloat16 (bf16)", "16 位浮点，指数位与 float32 相同；GPU 上的默认 dtype。", "A 16-bit float with float32's exponent range; the default dtype on GPU.", E + "server_args.ServerArgs.resolve"),
        ("贪心解码", "greedy decoding", "每步取概率最大的 token（temperature = 0）。", "Take the most likely token at every step (temperature = 0).", SA + "sampling_params.SamplingParams.is_greedy"),
        ("采样", "sampling", "按概率分布随机抽取下一个 token。", "Drawing the next token at random from the probability distribution.", "09-sampling.md"),
        ("序列结束符", "end of sequence (EOS)", "表示“说完了”的特殊 token；生成它就停止。", "A special token meaning \"done\"; generating it stops the request.", S + "schedule_batch.Req.check_finished"),
        ("特殊词元", "special token", "有固定 id、不会被拆分的控制 token，如 <|im_start|>。", "A control token with a fixed id that is never split, e.g. <|im_start|>.", "05-tokenization.md"),
        ("批", "batch", "一次前向里一起计算的多个请求。", "Several requests computed together in one forward pass.", R + "forward_batch.ForwardBatch"),
        ("批大小", "batch size (bs)", "一个批里的请求数。", "The number of requests in a batch.", R + "forward_batch.ForwardBatch.batch_size"),
        ("张量", "tensor", "多维数组；代码注释里写出形状，如 [bs, H, D]。", "A multi-dimensional array; comments give shapes such as [bs, H, D].", ""),
        ("形状", "shape", "张量各维的大小。", "The sizes of a tensor's dimensions.", ""),
    ]),
    ("推理与服务", "Serving", [
        ("预填充", "prefill", "一次前向处理提示词的全部 token，写入 KV 并得到第一个输出 token。", "One forward pass over all prompt tokens that writes their KV and yields the first output token.", "01-overview.md"),
        ("扩展（前向模式）", "extend (ForwardMode.EXTEND)", "minisgl/SGLang 对 prefill 的叫法：新 token 可接在已缓存前缀之后。", "The minisgl/SGLang name for prefill: new tokens may follow a cached prefix.", R + "forward_batch.ForwardMode"),
        ("解码", "decode", "每个请求一次只送 1 个新 token 的生成阶段。", "The generation phase where each request sends one new token per step.", R + "forward_batch.ForwardMode"),
        ("前向模式", "forward mode", "一次前向是 EXTEND 还是 DECODE。", "Whether a forward pass is EXTEND or DECODE.", R + "forward_batch.ForwardMode"),
        ("首 token 延迟", "time to first token (TTFT)", "请求到达到第一个输出 token 的时间。", "Time from a request's arrival to its first output token.", "01-overview.md"),
        ("每 token 间隔", "time per output token (TPOT)", "相邻两个输出 token 之间的平均时间。", "The average time between consecutive output tokens.", "01-overview.md"),
        ("token 间延迟", "inter-token latency (ITL)", "两个相邻输出 token 到达用户的间隔。", "The gap between two consecutive output tokens reaching the user.", "01-overview.md"),
        ("端到端延迟", "end-to-end latency", "请求从提交到完成的总时间；meta_info 里的 e2e_latency。", "Total time from submission to completion; e2e_latency in meta_info.", E + "engine._ReqState"),
        ("吞吐量", "throughput", "每秒处理或生成的 token 数。", "Tokens processed or generated per second.", "01-overview.md"),
        ("延迟", "latency", "单个请求等待的时间。", "How long one request waits.", "01-overview.md"),
        ("算力受限", "compute-bound", "速度取决于算术能力（prefill 的矩阵乘）。", "Speed limited by arithmetic (prefill's matrix multiplies).", "01-overview.md"),
        ("带宽受限", "memory-bound", "速度取决于读内存的速度（decode 每步读全部权重）。", "Speed limited by memory reads (decode reads all weights every step).", "01-overview.md"),
        ("流式输出", "streaming", "边生成边把新文字发给用户。", "Sending new text to the user while generating.", E + "engine.Engine.generate"),
        ("离线引擎", "offline engine", "在本进程里直接调用的 Python API：minisgl.Engine。", "The in-process Python API: minisgl.Engine.", E + "engine.Engine"),
        ("请求", "request", "一个 prompt 加采样参数；在调度器里是 Req。", "One prompt plus sampling parameters; a Req inside the scheduler.", S + "schedule_batch.Req"),
        ("请求 id", "request id (rid)", "标识一个请求的字符串，在所有消息里不变。", "The string that identifies a request in every message.", E + "io_struct.TokenizedGenerateReqInput"),
        ("元信息", "meta_info", "结果里的附加信息：id、finish_reason、token 数、cached_tokens。", "Extra result information: id, finish_reason, token counts, cached_tokens.", "00-welcome.md"),
        ("结束原因", "finish reason", "请求为何结束：stop、length 或 abort。", "Why a request ended: stop, length or abort.", S + "schedule_batch.BaseFinishReason"),
        ("中止", "abort", "提前结束一个请求并释放它的 KV。", "Ending a request early and freeing its KV.", S + "scheduler.Scheduler.abort_request"),
        ("并行采样", "parallel sampling (n)", "同一个 prompt 生成 n 个样本，共享前缀缓存。", "n samples of one prompt, sharing the prefix cache.", T + "tokenizer_manager.normalize_requests"),
        ("命令行接口", "command-line interface (CLI)", "minisgl generate / serve 命令。", "The minisgl generate / serve commands.", E + "cli"),
        ("启动参数", "server arguments (ServerArgs)", "引擎与服务器的全部参数，名字同 SGLang。", "Every engine and server knob, named as in SGLang.", E + "server_args.ServerArgs"),
        ("HTTP 服务器", "HTTP server", "提供 /generate 与 OpenAI 兼容接口的进程（第 03、04 章）。", "The process serving /generate and the OpenAI-compatible API (chapters 03, 04).", ""),
        ("OpenAI 兼容接口", "OpenAI-compatible API", "/v1/completions、/v1/chat/completions 等与 OpenAI 相同的 HTTP 接口。", "HTTP endpoints shaped like OpenAI's: /v1/completions, /v1/chat/completions, ...", ""),
        ("服务器发送事件", "server-sent events (SSE)", "HTTP 流式输出的格式，以 data: [DONE] 结束。", "The HTTP streaming format, ending with data: [DONE].", ""),
        ("进程间通信", "inter-process communication (IPC)", "进程之间传消息；minisgl 用 ZMQ 的 ipc:// 套接字。", "Passing messages between processes; minisgl uses ZMQ ipc:// sockets.", E + "io_struct"),
        ("ZeroMQ", "ZeroMQ (ZMQ)", "消息队列库；PUSH/PULL 套接字连接三个进程。", "A messaging library; PUSH/PULL sockets link the three processes.", ""),
        ("分词管理器", "TokenizerManager", "HTTP 进程里分词、登记请求、收集结果的部件。", "The part of the HTTP process that tokenizes, tracks requests and gathers results.", T + "tokenizer_manager.TokenizerManager"),
        ("反分词管理器", "DetokenizerManager", "反分词进程的核心：BatchTokenIDOut → BatchStrOut。", "The detokenizer process's core: BatchTokenIDOut → BatchStrOut.", T + "detokenizer.DetokenizerManager"),
        ("消息结构", "io_struct", "进程之间传递的 dataclass 消息。", "The dataclass messages passed between processes.", E + "io_struct"),
        ("生成请求输入", "GenerateReqInput", "用户的一次生成调用（文字或 id，可为一批）。", "One user generate call (text or ids, possibly a batch).", E + "io_struct.GenerateReqInput"),
        ("分词后的请求", "TokenizedGenerateReqInput", "送往调度器的单个已分词请求。", "One tokenized request on its way to the scheduler.", E + "io_struct.TokenizedGenerateReqInput"),
        ("批量 token 输出", "BatchTokenIDOut", "调度器一步的产出：每个请求的新 token。", "One scheduler step's output: new tokens per request.", E + "io_struct.BatchTokenIDOut"),
        ("批量文字输出", "BatchStrOut", "反分词之后每个请求新增的文字。", "New text per request, after detokenization.", E + "io_struct.BatchStrOut"),
        ("张量并行", "tensor parallelism (TP)", "把每层的矩阵切到多张 GPU 上一起算（--tp-size）。", "Splitting each layer's matrices over several GPUs (--tp-size).", E + "server_args.ServerArgs.tp_size"),
    ]),
    ("调度", "Scheduling", [
        ("调度器", "scheduler", "每一步决定谁进模型的部件（餐厅领班）。", "The part that decides who enters the model each step (the restaurant host).", S + "scheduler.Scheduler"),
        ("调度步", "scheduling step", "Scheduler.step() 的一次调用：选批、前向、采样、处理结果。", "One call of Scheduler.step(): pick a batch, forward, sample, process results.", S + "scheduler.Scheduler.step"),
        ("步输出", "StepOutput", "一步做了什么：模式、请求、token 数、结束与被 retract 的请求。", "What a step did: mode, requests, token count, who finished or was retracted.", S + "scheduler.StepOutput"),
        ("连续批处理", "continuous batching", "每一步重新组批：结束的离开、新的加入。", "Re-forming the batch every step: finished requests leave, new ones join.", "06-scheduling.md"),
        ("静态批处理", "static batching", "一批请求一起开始、等最长的结束才接新请求。", "A batch starts together and admits nobody until its longest request ends.", "06-scheduling.md"),
        ("迭代级调度", "iteration-level scheduling", "按每次前向（而不是每个请求）做调度决策，即连续批处理。", "Scheduling decisions per forward pass, not per request: continuous batching.", "06-scheduling.md"),
        ("等待队列", "waiting queue", "等待 prefill 的请求列表。", "The list of requests waiting for prefill.", S + "scheduler.Scheduler.waiting_queue"),
        ("运行中请求", "running requests", "已 prefill、正在 decode 的请求。", "Prefilled requests that are decoding.", S + "scheduler.Scheduler.running_reqs"),
        ("调度策略", "scheduling policy", "等待队列的排序方式：fcfs 或 lpm。", "How the waiting queue is ordered: fcfs or lpm.", S + "schedule_policy.SchedulePolicy"),
        ("先来先服务", "first come, first served (FCFS)", "按到达顺序接纳；默认策略。", "Admit in arrival order; the default policy.", S + "schedule_policy.SchedulePolicy.calc_priority"),
        ("最长前缀优先", "longest prefix match (LPM)", "缓存命中越长越先做，让共享前缀的请求挨在一起。", "Longest cache hit first, so requests sharing a prefix run together.", S + "schedule_policy.SchedulePolicy.calc_priority"),
        ("LPM 回退长度", "LPM fallback queue length", "队列超过 1,024 时 lpm 退回 fcfs，避免逐个查树的开销（SGLang 取 128）。", "Above 1,024 queued requests lpm falls back to fcfs, to avoid a tree lookup each (SGLang uses 128).", S + "schedule_policy.LPM_FALLBACK_QUEUE_LEN"),
        ("prefill 接纳器", "PrefillAdder", "按 token 预算逐个接纳请求、必要时切块的对象。", "The object that admits requests under token budgets and chunks when needed.", S + "schedule_policy.PrefillAdder"),
        ("接纳结果", "AddReqResult", "add_one_req 的返回：CONTINUE、NO_TOKEN、OTHER。", "What add_one_req returns: CONTINUE, NO_TOKEN, OTHER.", S + "schedule_policy.AddReqResult"),
        ("token 预算", "token budget", "一轮 prefill 还能接纳多少 token（总量、输入、块三项）。", "How many tokens one prefill round may still admit (total, input, chunk).", "06-scheduling.md"),
        ("剩余总 token", "rem_total_tokens", "空闲 + 可驱逐 − 运行中请求的预留 − 已接纳。", "Free + evictable − reserved for running requests − admitted.", S + "schedule_policy.PrefillAdder.rem_total_tokens"),
        ("最大 prefill token 数", "max_prefill_tokens", "一批 prefill 的输入 token 上限（默认 16,384）。", "The cap on a prefill batch's input tokens (default 16,384).", E + "server_args.ServerArgs.max_prefill_tokens"),
        ("最大运行请求数", "max_running_requests", "同时运行的请求数上限（CPU 64；GPU 1024，显存 < 64 GiB 时 256）。", "The cap on concurrently running requests (64 on CPU; 1024 on GPU, 256 below 64 GiB of memory).", E + "server_args.ServerArgs.max_running_requests"),
        ("新 token 比例", "new_token_ratio", "估计运行中请求还要多少 token 的比例，0.7 起逐步下降。", "The ratio estimating running requests' future tokens, starting at 0.7 and decaying.", S + "scheduler.Scheduler.new_token_ratio"),
        ("调度保守度", "schedule conservativeness", "缩放 new_token_ratio；越小越激进。", "Scales new_token_ratio; lower is more eager.", E + "server_args.ServerArgs.schedule_conservativeness"),
        ("输出预留截断", "CLIP_MAX_NEW_TOKENS", "预留输出时把 max_new_tokens 截到 4096。", "Reserved output clips max_new_tokens to 4096.", S + "schedule_policy.CLIP_MAX_NEW_TOKENS"),
        ("分块预填充", "chunked prefill", "把长 prompt 切块、一步做一块（厨房备菜与炒菜交替）。", "Cutting a long prompt into chunks, one per step (prep and cooking take turns).", "06-scheduling.md"),
        ("块大小", "chunked_prefill_size", "分块 prefill 的块长（CPU 2,048，GPU 8,192；-1 关闭）。", "The chunk length of chunked prefill (2,048 CPU, 8,192 GPU; -1 = off).", E + "server_args.ServerArgs.chunked_prefill_size"),
        ("分块中的请求", "chunked request", "还有下一块要算的请求；调度器最多有一个。", "The request with more chunks to go; the scheduler has at most one.", S + "scheduler.Scheduler.chunked_req"),
        ("强行接纳", "forced admission", "没有请求在跑时，只要输入放得下就接纳队首。", "When nothing runs, admit the head of the queue if its input fits.", S + "schedule_policy.PrefillAdder.force_add"),
        ("回退 / 撤回", "retraction", "内存不够时把请求退回队列，保留已生成 token，稍后重新 prefill。", "When memory runs out, send requests back to the queue, keeping their output, to re-prefill later.", S + "scheduler.Scheduler.retract_decode"),
        ("抢占", "preemption", "为了别的请求而暂停一个请求；minisgl 的形式是 retraction。", "Pausing a request for others; minisgl's form of it is retraction.", "06-scheduling.md"),
        ("prefill 优先", "prefill-first", "有可 prefill 的请求就先做 prefill，降低 TTFT。", "Prefill whenever possible, to keep TTFT low.", S + "scheduler.Scheduler.step"),
        ("空转", "idle step", "既没有 prefill 也没有 decode 的一步（StepOutput 的模式为 None）。", "A step with neither prefill nor decode (StepOutput's mode is None).", S + "scheduler.StepOutput"),
        ("请求对象", "Req", "调度器里的一个请求：ids、KV 位置、前缀、结束原因。", "A request inside the scheduler: ids, KV location, prefix, finish reason.", S + "schedule_batch.Req"),
        ("本轮目标序列", "fill_ids", "本轮要进入模型的 token 序列（分块时被截短）。", "The token sequence this round brings to the model (cut when chunked).", S + "schedule_batch.Req.fill_ids"),
        ("扩展长度", "extend_input_len", "本轮实际送进模型的新 token 数。", "How many new tokens go into the model this round.", S + "schedule_batch.Req.extend_input_len"),
        ("已有 KV 长度", "kv_len", "请求已写入 KV 池的 token 数；decode 中 = 总长 − 1。", "How many of the request's tokens have KV; len − 1 while decoding.", S + "schedule_batch.Req.kv_len"),
        ("已缓存 token 数", "cached_tokens", "第一次 prefill 时命中前缀缓存的 token 数。", "Prompt tokens found in the prefix cache at the first prefill.", S + "schedule_batch.Req.cached_tokens"),
        ("结束检查", "check_finished", "按 abort → 长度 → EOS/stop id → stop 串的顺序检查。", "Checks abort → length → EOS/stop ids → stop strings, in that order.", S + "schedule_batch.Req.check_finished"),
        ("长度结束", "FINISH_LENGTH", "达到 max_new_tokens。", "Reached max_new_tokens.", S + "schedule_batch.FINISH_LENGTH"),
        ("命中 token 结束", "FINISH_MATCHED_TOKEN", "生成了 EOS 或 stop_token_ids 中的 token。", "Generated an EOS or a token in stop_token_ids.", S + "schedule_batch.FINISH_MATCHED_TOKEN"),
        ("命中字符串结束", "FINISH_MATCHED_STR", "输出里出现了 stop 字符串。", "A stop string appeared in the output.", S + "schedule_batch.FINISH_MATCHED_STR"),
        ("中止结束", "FINISH_ABORT", "被中止、输入不合法或内存放不下。", "Aborted, invalid input, or it could not fit in memory.", S + "schedule_batch.FINISH_ABORT"),
        ("处理批结果", "process_batch_result", "追加 token、检查结束、把 KV 交给缓存。", "Append tokens, check finish, hand KV to the cache.", S + "scheduler.Scheduler.process_batch_result"),
        ("选 prefill 批", "get_new_batch_prefill", "按策略与预算选出本轮 prefill 的请求。", "Choose this round's prefill requests by policy and budget.", S + "scheduler.Scheduler.get_new_batch_prefill"),
        ("更新运行批", "update_running_batch", "decode 前检查内存，必要时 retraction。", "Check memory before decode and retract if needed.", S + "scheduler.Scheduler.update_running_batch"),
        ("池完整性检查", "check_pool_whole", "空闲时的不变量：无锁、无泄漏、无重复释放。", "Idle invariants: no locks, no leaks, nothing freed twice.", S + "scheduler.Scheduler.check_pool_whole"),
        ("饥饿", "starvation", "某个请求一直排不上；强行接纳与 fcfs 避免它。", "A request that never gets its turn; forced admission and fcfs prevent it.", "06-scheduling.md"),
        ("公平性", "fairness", "请求之间按某种规则分享资源；lpm 以公平换命中率。", "Sharing resources between requests by some rule; lpm trades fairness for hit rate.", "06-scheduling.md"),
    ]),
    ("KV 缓存与内存", "KV cache and memory", [
        ("KV 缓存", "KV cache", "存下每个 token 在每层的 K 和 V，decode 时不必重算。", "Each token's K and V in every layer, kept so decode need not recompute them.", "08-kv-cache.md"),
        ("键", "key (K)", "注意力里被 query 比较的向量。", "The vector a query is compared with in attention.", "01-overview.md"),
        ("值", "value (V)", "注意力按权重求和的向量。", "The vectors attention sums with its weights.", "01-overview.md"),
        ("每 token KV 字节数", "KV bytes per token", "2 × 层数 × KV 头数 × head_dim × dtype 字节；Qwen3-0.6B bf16 为 114,688 B。", "2 × layers × KV heads × head_dim × dtype bytes; 114,688 B for Qwen3-0.6B in bf16.", M + "memory_pool.TokenToKVPool.bytes_per_token"),
        ("分页 KV 池", "paged KV pool", "按页分配 KV 槽位（操作系统的分页虚拟内存）。", "KV slots allocated by page (an operating system's paged virtual memory).", "08-kv-cache.md"),
        ("分页注意力", "PagedAttention", "vLLM 提出的思想：KV 按页存放，注意力通过页表读取。", "vLLM's idea: KV stored in pages, read by attention through a page table.", "08-kv-cache.md"),
        ("槽位", "slot", "KV 池里存一个 token 的 K/V 的位置。", "A place in the KV pool that holds one token's K/V.", M + "memory_pool.TokenToKVPool"),
        ("页", "page", "page_size 个连续槽位；只属于一个请求或一个树节点。", "page_size consecutive slots, owned by one request or one tree node.", M + "memory_pool.TokenToKVPoolAllocator"),
        ("页大小", "page size", "每页的 token 数（--page-size，默认 1）。", "Tokens per page (--page-size, default 1).", E + "server_args.ServerArgs.page_size"),
        ("哑槽位", "dummy slot", "槽位 0（或第 0 页）：从不分配，填充的 token 写到这里。", "Slot 0 (or page 0): never allocated; padded tokens write there.", M + "memory_pool.TokenToKVPoolAllocator"),
        ("哑行", "dummy row", "req_to_token 的第 0 行，全为 0，从不分配给请求。", "Row 0 of req_to_token, all zeros, never given to a request.", M + "memory_pool.ReqToTokenPool.DUMMY_ROW"),
        ("请求到 token 映射池", "ReqToTokenPool", "每个请求一行，记录它每个 token 的 KV 槽位（页表）。", "One row per request recording each token's KV slot (the page table).", M + "memory_pool.ReqToTokenPool"),
        ("请求到 token 表", "req_to_token", "ReqToTokenPool 的 [行数, 上下文] 张量。", "ReqToTokenPool's [rows, context] tensor.", M + "memory_pool.ReqToTokenPool.req_to_token"),
        ("请求池索引", "req_pool_idx", "请求在 req_to_token 里的行号。", "A request's row in req_to_token.", S + "schedule_batch.Req.req_pool_idx"),
        ("token 到 KV 池", "TokenToKVPool", "每层一对 K/V 缓冲区，形状 [槽位数 + 页, Hkv, D]。", "One K/V buffer pair per layer, shaped [slots + page, Hkv, D].", M + "memory_pool.TokenToKVPool"),
        ("KV 分配器", "TokenToKVPoolAllocator", "空闲页链表：按页分配与回收槽位。", "The free-page list: allocates and frees slots by page.", M + "memory_pool.TokenToKVPoolAllocator"),
        ("空闲页", "free pages", "分配器里还没分出去的页号。", "The allocator's page numbers not yet handed out.", M + "memory_pool.TokenToKVPoolAllocator.clear"),
        ("扩展分配", "alloc_extend", "为每个请求的 [prefix_len, seq_len) 分配槽位。", "Allocates slots for positions [prefix_len, seq_len) of each request.", M + "memory_pool.TokenToKVPoolAllocator.alloc_extend"),
        ("解码分配", "alloc_decode", "每个请求再分配 1 个槽位。", "One more slot per request.", M + "memory_pool.TokenToKVPoolAllocator.alloc_decode"),
        ("输出缓存位置", "out_cache_loc", "本批新 token 的 K/V 要写入的槽位 [N]。", "The slots where this batch's new tokens' K/V go, [N].", R + "forward_batch.ForwardBatch.out_cache_loc"),
        ("内存碎片", "fragmentation", "空闲内存被切成用不上的小段；分页避免外部碎片。", "Free memory split into unusable pieces; paging avoids external fragmentation.", "08-kv-cache.md"),
        ("静态显存比例", "mem_fraction_static", "GPU 上权重 + KV 池占显存的比例（默认 0.85）。", "The GPU memory fraction for weights + KV pool (default 0.85).", E + "server_args.ServerArgs.mem_fraction_static"),
        ("KV 池容量", "max_total_tokens", "KV 池能放的 token 数；可用 --max-total-tokens 指定。", "How many tokens the KV pool holds; settable with --max-total-tokens.", R + "model_runner.ModelRunner._profile_max_num_tokens"),
        ("前缀缓存", "prefix cache", "复用不同请求共享前缀的 KV。", "Reusing the KV of a prefix that requests share.", "08-kv-cache.md"),
        ("基数树", "radix tree", "边上存一段 token 的压缩前缀树（图书馆卡片目录）。", "A compressed prefix tree whose edges hold runs of tokens (a library card catalogue).", M + "radix_cache.RadixCache"),
        ("基数注意力", "RadixAttention", "SGLang 用基数树管理前缀缓存的方法。", "SGLang's way of managing the prefix cache with a radix tree.", M + "radix_cache.RadixCache"),
        ("基数树缓存", "RadixCache", "minisgl 的前缀缓存实现。", "minisgl's prefix-cache implementation.", M + "radix_cache.RadixCache"),
        ("树节点", "TreeNode", "基数树的节点：key、value、lock_ref、last_access_time。", "A radix-tree node: key, value, lock_ref, last_access_time.", M + "radix_cache.TreeNode"),
        ("前缀匹配", "match_prefix", "沿树找最长已缓存前缀，返回槽位和最后节点。", "Walks the tree to the longest cached prefix; returns its slots and last node.", M + "radix_cache.RadixCache.match_prefix"),
        ("节点分裂", "node split", "匹配停在节点中间时把它一分为二。", "Cutting a node in two when a match ends inside it.", M + "radix_cache.RadixCache._split_node"),
        ("插入", "insert", "把 key → 槽位插入树，返回已存在的前缀长度。", "Inserts key → slots into the tree; returns the length already present.", M + "radix_cache.RadixCache.insert"),
        ("驱逐", "eviction", "释放缓存里没人用的 KV，腾出空间。", "Freeing unused cached KV to make room.", M + "radix_cache.RadixCache.evict"),
        ("最近最少使用", "least recently used (LRU)", "驱逐顺序：最久没访问的先走。", "The eviction order: the longest-unused goes first.", M + "radix_cache.RadixCache.evict"),
        ("逻辑时钟", "logical clock", "单调递增的计数器，记录节点的访问先后（比 time.time 确定）。", "A monotonically increasing counter ordering node accesses (more deterministic than time.time).", M + "radix_cache.TreeNode"),
        ("引用锁", "lock_ref", "节点被多少运行中请求使用；> 0 时不能驱逐。", "How many running requests use a node; > 0 means it cannot be evicted.", M + "radix_cache.RadixCache.inc_lock_ref"),
        ("可驱逐大小", "evictable size", "未锁节点持有的 token 数。", "Tokens held by unlocked nodes.", M + "radix_cache.RadixCache.evictable_size"),
        ("受保护大小", "protected size", "被锁节点持有的 token 数。", "Tokens held by locked nodes.", M + "radix_cache.RadixCache.protected_size"),
        ("前缀槽位", "prefix_indices", "请求命中并锁住的前缀在 KV 池里的槽位。", "The KV slots of a request's matched, locked prefix.", S + "schedule_batch.Req.prefix_indices"),
        ("最后节点", "last_node", "请求前缀路径上的最后一个树节点（加锁的起点）。", "The last tree node of a request's prefix path (where its lock starts).", S + "schedule_batch.Req.last_node"),
        ("缓存未完成请求", "cache_unfinished_req", "prefill 后或分块间把已算 KV 插入树并移锁。", "After prefill or between chunks: insert computed KV into the tree and move the lock.", M + "radix_cache.RadixCache.cache_unfinished_req"),
        ("缓存已完成请求", "cache_finished_req", "请求结束时把 KV 插入树、释放重复部分并解锁。", "At a request's end: insert its KV, free duplicates, unlock.", M + "radix_cache.RadixCache.cache_finished_req"),
        ("释放请求", "release_req", "retraction 时丢弃请求自己的 KV，只解锁前缀。", "On retraction: drop the request's own KV, only unlock the prefix.", M + "radix_cache.RadixCache.release_req"),
        ("块缓存", "ChunkCache", "关闭前缀缓存时的替代：不共享，只记住分块进度。", "The stand-in when the prefix cache is off: no sharing, only chunk progress.", M + "chunk_cache.ChunkCache"),
        ("清空缓存", "flush cache", "空闲时清空基数树和分配器。", "Clearing the radix tree and the allocator while idle.", S + "scheduler.Scheduler.flush_cache"),
        ("缓存命中率", "cache hit rate", "prompt token 中命中前缀缓存的比例。", "The share of prompt tokens found in the prefix cache.", "08-kv-cache.md"),
        ("写时复制", "copy-on-write", "共享的数据被修改时才复制；KV 前缀只读，因此可直接共享。", "Copy shared data only when written; KV prefixes are read-only, so they are shared directly.", "08-kv-cache.md"),
    ]),
    ("采样", "Sampling", [
        ("采样器", "sampler", "把 logits 变成下一个 token 的部件（决策轮盘）。", "Turns logits into the next token (a roulette wheel).", SA + "sampler.Sampler"),
        ("采样参数", "sampling parameters", "控制采样的每请求参数，字段同 SGLang。", "Per-request knobs that control sampling, named as in SGLang.", SA + "sampling_params.SamplingParams"),
        ("批采样信息", "SamplingBatchInfo", "一批的采样参数张量（每行一个请求）。", "A batch's sampling parameters as tensors (one row per request).", SA + "sampler.SamplingBatchInfo"),
        ("温度", "temperature", "logits 除以 T：T<1 更尖锐，T>1 更平均，0 为贪心。", "Logits divided by T: T<1 sharper, T>1 flatter, 0 greedy.", SA + "sampling_params.SamplingParams.temperature"),
        ("归一化指数函数", "softmax", "p_i = exp(l_i) / Σ exp(l_j)。", "p_i = exp(l_i) / Σ exp(l_j).", "09-sampling.md"),
        ("前 k 截断", "top-k", "只保留概率最高的 k 个 token。", "Keep only the k most likely tokens.", SA + "sampling_params.SamplingParams.top_k"),
        ("核采样", "top-p (nucleus) sampling", "保留累计概率刚达到 p 的最小集合。", "Keep the smallest set whose cumulative probability reaches p.", SA + "sampling_params.SamplingParams.top_p"),
        ("最小概率截断", "min-p", "丢弃概率低于 min_p × 最大概率的 token。", "Drop tokens below min_p × the largest probability.", SA + "sampling_params.SamplingParams.min_p"),
        ("截断", "truncation", "采样前把不太可能的 token 概率置 0 并重新归一化。", "Zeroing unlikely tokens' probabilities before sampling, then renormalising.", SA + "sampler.top_k_top_p_min_p_filter"),
        ("重新归一化", "renormalisation", "截断后把剩下的概率除以它们的和。", "Dividing the remaining probabilities by their sum after truncation.", SA + "sampler.top_k_top_p_min_p_filter"),
        ("频率惩罚", "frequency penalty", "l_i −= f × 出现次数（OpenAI 定义）。", "l_i −= f × count (OpenAI's definition).", SA + "sampler.apply_penalties"),
        ("存在惩罚", "presence penalty", "出现过就 l_i −= p（OpenAI 定义）。", "l_i −= p once present (OpenAI's definition).", SA + "sampler.apply_penalties"),
        ("重复惩罚", "repetition penalty", "出现过的 token：正 logit 除以 r，负 logit 乘以 r（CTRL/HF）。", "For seen tokens: positive logits divided by r, negative multiplied (CTRL/HF).", SA + "sampler.apply_penalties"),
        ("最少新 token 数", "min_new_tokens", "达到之前屏蔽 EOS 与 stop_token_ids。", "EOS and stop_token_ids are masked until this many tokens.", SA + "sampling_params.SamplingParams.min_new_tokens"),
        ("最多新 token 数", "max_new_tokens", "最多生成的 token 数（默认 128）。", "The most tokens to generate (default 128).", SA + "sampling_params.SamplingParams.max_new_tokens"),
        ("忽略 EOS", "ignore_eos", "生成 EOS 也不停（基准测试常用）。", "Do not stop at EOS (common in benchmarks).", SA + "sampling_params.SamplingParams.ignore_eos"),
        ("停止字符串", "stop strings", "输出中出现即停止，文字在它之前截断。", "Generation stops when one appears; the text is cut before it.", SA + "sampling_params.SamplingParams.stop"),
        ("停止 token id", "stop_token_ids", "生成这些 id 之一就停止。", "Generation stops at any of these ids.", SA + "sampling_params.SamplingParams.stop_token_ids"),
        ("随机种子", "seed", "每请求的随机数发生器种子，同种子结果可复现。", "The seed of a request's own generator; the same seed reproduces the result.", SA + "sampling_params.SamplingParams.seed"),
        ("随机数发生器", "random generator (torch.Generator)", "带种子的请求在 Req 里持有自己的发生器。", "A seeded request holds its own generator in its Req.", S + "schedule_batch.Req.generator"),
        ("全局随机种子", "random_seed", "启动时 torch.manual_seed 的种子（默认 0）。", "The seed given to torch.manual_seed at start-up (default 0).", E + "server_args.ServerArgs.random_seed"),
        ("指数竞赛", "exponential race", "argmax(p_i / E_i)，E_i ~ Exp(1)：一次为整批按 p 抽样。", "argmax(p_i / E_i), E_i ~ Exp(1): one draw from p for the whole batch.", SA + "sampler.Sampler.__call__"),
        ("多项式抽样", "multinomial sampling", "按概率抽一个类别：torch.multinomial。", "Drawing one category by probability: torch.multinomial.", SA + "sampler.Sampler.__call__"),
        ("坏行", "bad rows (NaN/Inf)", "logits 含非有限值的行；请求以 abort 结束。", "Rows whose logits are not finite; their requests end with abort.", SA + "sampler.Sampler.__call__"),
        ("参数校验", "validation", "verify() 检查每个字段的范围，报错写出字段名。", "verify() checks each field's range; errors name the field.", SA + "sampling_params.SamplingParams.verify"),
        ("确定性", "determinism", "同样的输入得到同样的输出；贪心与带种子的采样是确定的。", "The same input gives the same output; greedy and seeded sampling are deterministic.", "09-sampling.md"),
        ("结构化输出", "structured output", "按 JSON schema 或正则约束生成：每步用语法位掩码遮住不合法的 token（xgrammar，第 11 章）。", "Generation constrained by a JSON schema or regex: a grammar bitmask hides illegal tokens at every step (xgrammar, chapter 11).", SA + "sampling_params.SamplingParams.json_schema"),
    ]),
    ("分词", "Tokenization", [
        ("分词器", "tokenizer", "文字 ↔ token id 的转换器；minisgl 用 HF 的。", "Converts text ↔ token ids; minisgl uses Hugging Face's.", E + "utils.load_tokenizer"),
        ("分词", "tokenization", "把文字切成 token id。", "Cutting text into token ids.", "05-tokenization.md"),
        ("反分词", "detokenization", "把 token id 变回文字。", "Turning token ids back into text.", "05-tokenization.md"),
        ("增量反分词", "incremental detokenization", "边生成边解码，只输出确定不再变的文字（同声传译）。", "Decoding while generating, emitting only text that can no longer change (a simultaneous interpreter).", T + "detokenizer.IncrementalDetokenizer"),
        ("上下文偏移", "surr_offset", "增量解码时上下文段的起点。", "Where the context span starts in incremental decoding.", T + "detokenizer.IncrementalDetokenizer"),
        ("读取偏移", "read_offset", "已确认与待确认 token 的分界。", "The boundary between confirmed and pending tokens.", T + "detokenizer.IncrementalDetokenizer"),
        ("替换字符", "replacement character (U+FFFD)", "“�”：解码不完整的 UTF-8 字节时得到它。", "\"�\": what decoding incomplete UTF-8 bytes gives.", T + "detokenizer.IncrementalDetokenizer.append"),
        ("字节对编码", "byte-pair encoding (BPE)", "反复合并最常见相邻符号对来建词表的算法。", "Building a vocabulary by repeatedly merging the most frequent adjacent pair.", "05-tokenization.md"),
        ("字节级 BPE", "byte-level BPE", "以 256 个字节为基础字母表的 BPE，没有 <unk>。", "BPE over the 256 bytes as its alphabet: never an <unk>.", "05-tokenization.md"),
        ("SentencePiece", "SentencePiece", "另一种分词器库，用 ▁ 表示前导空格。", "Another tokenizer library, marking leading spaces with ▁.", "05-tokenization.md"),
        ("UTF-8", "UTF-8", "变长文字编码：汉字 3 字节、emoji 4 字节。", "A variable-length text encoding: 3 bytes per Chinese character, 4 per emoji.", "05-tokenization.md"),
        ("聊天模板", "chat template", "把多轮消息渲染成模型训练时格式的 Jinja 模板。", "A Jinja template rendering chat messages in the format the model was trained on.", "05-tokenization.md"),
        ("ChatML", "ChatML", "<|im_start|>role\\n内容<|im_end|> 的对话格式（Qwen 使用）。", "The <|im_start|>role\\ncontent<|im_end|> chat format (used by Qwen).", E + "testing.CHAT_TEMPLATE"),
        ("生成提示", "generation prompt", "模板末尾的 <|im_start|>assistant\\n，提示轮到模型说话。", "The template's closing <|im_start|>assistant\\n, telling the model it is its turn.", "05-tokenization.md"),
        ("角色", "role", "对话消息的说话人：system、user、assistant。", "Who speaks a chat message: system, user, assistant.", "05-tokenization.md"),
        ("跳过特殊 token", "skip_special_tokens", "解码时去掉特殊 token（默认是）。", "Drop special tokens when decoding (on by default).", SA + "sampling_params.SamplingParams.skip_special_tokens"),
        ("规范化请求", "normalize_requests", "把一次调用变成若干已分词、已校验的请求。", "Turns one call into tokenized, validated requests.", T + "tokenizer_manager.normalize_requests"),
        ("stop 串扣留", "stop-string hold-back", "流式时扣住可能是 stop 串开头的文字尾巴。", "While streaming, holding back a tail that might begin a stop string.", T + "detokenizer._partial_stop_len"),
        ("初始解码上下文", "initial detokenization offset", "用 prompt 的最后 5 个 token 作第一个输出 token 的上下文。", "The prompt's last 5 tokens serve as context for the first output token.", T + "detokenizer.INIT_INCREMENTAL_DETOKENIZATION_OFFSET"),
        ("加特殊 token", "add_special_tokens", "编码时是否加 BOS 等（默认加，与 tokenizer(text) 一致）。", "Whether encoding adds BOS etc. (yes by default, as tokenizer(text)).", "05-tokenization.md"),
        ("序列开始符", "beginning of sequence (BOS)", "一些模型（如 Llama 3）在开头加的特殊 token。", "A special token some models (e.g. Llama 3) put first.", "05-tokenization.md"),
    ]),
    ("模型结构", "Model architecture", [
        ("Transformer", "Transformer", "由注意力层和前馈层堆叠成的网络结构。", "A network of stacked attention and feed-forward layers.", MO + "llama.LlamaForCausalLM"),
        ("仅解码器模型", "decoder-only model", "只有因果注意力的 Transformer，如 Llama、Qwen。", "A Transformer with causal attention only, such as Llama and Qwen.", MO + "llama.LlamaModel"),
        ("因果语言模型", "causal language model", "每个位置只看它之前的 token 来预测下一个。", "Each position sees only earlier tokens to predict the next.", MO + "llama.LlamaForCausalLM"),
        ("解码层", "decoder layer", "注意力 + MLP，各带残差与 RMSNorm。", "Attention + MLP, each with a residual and an RMSNorm.", MO + "llama.LlamaDecoderLayer"),
        ("注意力", "attention", "每个 token 按与其他 token 的相关度加权读取它们的值。", "Each token reads the values of others, weighted by relevance.", MO + "llama.LlamaAttention"),
        ("自注意力", "self-attention", "同一序列内 token 之间的注意力。", "Attention among the tokens of one sequence.", MO + "llama.LlamaAttention"),
        ("因果注意力", "causal attention", "位置 i 只能看位置 ≤ i。", "Position i may only see positions ≤ i.", R + "attention.torch_backend.TorchAttnBackend"),
        ("因果掩码", "causal mask", "屏蔽未来位置的布尔矩阵；有前缀时要偏移。", "A boolean matrix hiding future positions; offset by the prefix when there is one.", R + "attention.torch_backend.TorchAttnBackend.forward"),
        ("缩放点积注意力", "scaled dot-product attention (SDPA)", "softmax(q·kᵀ / √d) · v。", "softmax(q·kᵀ / √d) · v.", R + "attention.torch_backend.TorchAttnBackend.forward"),
        ("查询", "query (Q)", "当前 token 用来与各个 key 比较的向量。", "The vector the current token compares with every key.", MO + "llama.LlamaAttention"),
        ("多头注意力", "multi-head attention (MHA)", "H 个头各做一次注意力，再拼起来。", "H heads each attend, then the results are concatenated.", MO + "llama.LlamaAttention"),
        ("分组查询注意力", "grouped-query attention (GQA)", "多个 query 头共享一个 KV 头，KV 缓存更小。", "Several query heads share one KV head, shrinking the KV cache.", MO + "config.ModelConfig"),
        ("注意力头", "attention head", "注意力的一个独立子空间。", "One independent subspace of attention.", MO + "config.ModelConfig.num_heads"),
        ("KV 头数", "num_kv_heads (Hkv)", "KV 头的数量；GQA 时小于 query 头数。", "The number of KV heads; fewer than query heads under GQA.", MO + "config.ModelConfig.num_kv_heads"),
        ("头维度", "head_dim (D)", "每个头的向量长度（Qwen3 为 128）。", "Each head's vector length (128 for Qwen3).", MO + "config.ModelConfig.head_dim"),
        ("隐藏维度", "hidden size", "每个 token 在层间传递的向量长度。", "The length of each token's vector between layers.", MO + "config.ModelConfig.hidden_size"),
        ("中间维度", "intermediate size", "MLP 中间层的宽度。", "The width of the MLP's middle layer.", MO + "config.ModelConfig.intermediate_size"),
        ("层数", "number of layers", "解码层的个数（Qwen3-0.6B 为 28）。", "How many decoder layers (28 for Qwen3-0.6B).", MO + "config.ModelConfig.num_layers"),
        ("前馈网络", "feed-forward network (MLP)", "每个 token 独立通过的两层（或三矩阵）网络。", "The per-token two-layer (three-matrix) network.", MO + "layers.MLP"),
        ("SwiGLU", "SwiGLU", "down(silu(gate(x)) × up(x)) 形式的 MLP。", "An MLP of the form down(silu(gate(x)) × up(x)).", MO + "layers.MLP"),
        ("SiLU 激活", "SiLU", "x · sigmoid(x)。", "x · sigmoid(x).", MO + "layers.MLP"),
        ("均方根归一化", "RMSNorm", "x / sqrt(mean(x²) + eps) × weight，在 float32 里算。", "x / sqrt(mean(x²) + eps) × weight, computed in float32.", MO + "layers.RMSNorm"),
        ("残差连接", "residual connection", "h = h + f(norm(h))：输出加回输入。", "h = h + f(norm(h)): the output is added back to the input.", MO + "llama.LlamaDecoderLayer.forward"),
        ("旋转位置编码", "rotary position embedding (RoPE)", "按位置旋转 q/k 的向量对，让注意力感知相对位置。", "Rotates pairs of q/k dimensions by position so attention sees relative positions.", MO + "layers.RotaryEmbedding"),
        ("RoPE 底数", "rope_theta", "RoPE 频率的底数 θ。", "The base θ of RoPE frequencies.", MO + "config.ModelConfig.rope_theta"),
        ("RoPE 缩放", "RoPE scaling (llama3)", "Llama 3 对低频维度除以 factor 以延长上下文。", "Llama 3 divides low frequencies by a factor to extend the context.", MO + "layers.llama3_inv_freq"),
        ("Q/K 归一化", "q/k norm", "Qwen3 对每个头的 q、k 做 RMSNorm 再加 RoPE。", "Qwen3 RMSNorms each head's q and k before RoPE.", MO + "qwen3.Qwen3ForCausalLM"),
        ("注意力偏置", "attention bias", "q/k/v 投影的偏置项；Qwen2 有。", "Biases on the q/k/v projections; Qwen2 has them.", MO + "config.ModelConfig.attention_bias"),
        ("词嵌入", "embedding", "token id → 向量的查表。", "A lookup from token id to vector.", MO + "llama.LlamaModel"),
        ("语言模型头", "LM head", "hidden → logits 的最后一个线性层。", "The final linear layer from hidden states to logits.", MO + "llama.LlamaForCausalLM.compute_logits"),
        ("共享词嵌入", "tied embeddings", "lm_head 与 embed_tokens 用同一个权重。", "lm_head and embed_tokens share one weight.", MO + "config.ModelConfig.tie_word_embeddings"),
        ("隐藏状态", "hidden states", "层与层之间每个 token 的向量 [N, hidden]。", "Each token's vector between layers, [N, hidden].", R + "model_runner.ModelRunner.forward"),
        ("模型配置", "ModelConfig", "从 config.json 读出的引擎所需数字。", "The numbers the engine needs, read from config.json.", MO + "config.ModelConfig"),
        ("模型注册表", "MODEL_REGISTRY", "架构名 → 模型类。", "Architecture name → model class.", MO + "loader.MODEL_REGISTRY"),
        ("支持的架构", "supported architectures", "Qwen3、Qwen2、Llama。", "Qwen3, Qwen2, Llama.", MO + "config.SUPPORTED_ARCHITECTURES"),
        ("Llama", "Llama", "Meta 的开源模型结构；minisgl 的基类。", "Meta's open model architecture; minisgl's base class.", MO + "llama.LlamaForCausalLM"),
        ("Qwen2", "Qwen2", "Llama 结构 + q/k/v 偏置。", "The Llama architecture + q/k/v biases.", MO + "qwen2.Qwen2ForCausalLM"),
        ("Qwen3", "Qwen3", "Llama 结构 + 每头 q/k RMSNorm。", "The Llama architecture + per-head q/k RMSNorm.", MO + "qwen3.Qwen3ForCausalLM"),
        ("参差批", "ragged batch", "不同长度的请求直接拼接，没有 padding。", "Requests of different lengths concatenated, without padding.", R + "forward_batch.ForwardBatch"),
        ("填充", "padding", "为对齐长度补的无用位置；minisgl 的 prefill 不用 padding。", "Filler positions for equal lengths; minisgl's prefill uses none.", R + "forward_batch.ForwardBatch"),
        ("位置", "positions", "每个 token 在它所属序列里的位置 [N]。", "Each token's position in its own sequence, [N].", R + "forward_batch.ForwardBatch.positions"),
        ("前向批", "ForwardBatch", "一次前向的全部输入：token、位置、槽位、长度。", "All inputs of one forward pass: tokens, positions, slots, lengths.", R + "forward_batch.ForwardBatch"),
        ("序列长度", "seq_lens", "本步之后每个请求的 KV 总长。", "Each request's total KV length after this step.", R + "forward_batch.ForwardBatch.seq_lens"),
        ("前缀长度", "extend_prefix_lens", "每个请求已缓存、不用再算的长度。", "Each request's cached length that need not be recomputed.", R + "forward_batch.ForwardBatch.extend_prefix_lens"),
        ("模型执行器", "ModelRunner", "加载模型、建 KV 池、执行前向的部件。", "Loads the model, builds the KV pool, runs forward passes.", R + "model_runner.ModelRunner"),
        ("权重加载", "weight loading", "按名字把 safetensors 张量拷进模型。", "Copying safetensors tensors into the model by name.", MO + "loader.load_model"),
        ("困惑度", "perplexity", "exp(平均交叉熵)；越低模型越好。", "exp(mean cross-entropy); lower is better.", ""),
        ("交叉熵", "cross-entropy", "预测分布与真实 token 的差距（训练损失）。", "The gap between predicted distribution and true token (the training loss).", ""),
    ]),
    ("GPU 与内核", "GPUs and kernels", [
        ("图形处理器", "GPU", "大规模并行的处理器；推理的主要硬件。", "A massively parallel processor; the main inference hardware.", ""),
        ("CUDA", "CUDA", "NVIDIA GPU 的编程平台。", "NVIDIA's GPU programming platform.", ""),
        ("内核", "kernel", "在 GPU 上并行运行的一个函数。", "A function run in parallel on the GPU.", ""),
        ("Triton", "Triton", "用 Python 写 GPU 内核的语言与编译器。", "A language and compiler for writing GPU kernels in Python.", ""),
        ("Triton 解释器", "Triton interpreter (TRITON_INTERPRET=1)", "在 CPU 上解释执行 Triton 内核，用于测试。", "Runs Triton kernels on a CPU, for tests.", ""),
        ("注意力后端", "attention backend", "实现注意力与 KV 读写的可替换部件：torch 或 triton。", "The pluggable part doing attention and KV reads/writes: torch or triton.", E + "server_args.ServerArgs.attention_backend"),
        ("参考后端", "reference backend", "纯 PyTorch、逐请求循环的注意力（CPU 默认）。", "Plain-PyTorch attention looping over requests (the CPU default).", R + "attention.torch_backend.TorchAttnBackend"),
        ("前向元数据", "forward metadata", "后端在每次前向前准备的索引（如 kv_indptr）。", "Indices a backend prepares before each forward pass (e.g. kv_indptr).", R + "attention.torch_backend.TorchAttnBackend.init_forward_metadata"),
        ("CUDA 图", "CUDA graph", "录下一次 decode 的所有内核，之后整段回放（录好的舞步）。", "Recording one decode's kernels and replaying them whole (a recorded dance).", E + "server_args.ServerArgs.disable_cuda_graph"),
        ("CSR 索引", "CSR indices (kv_indptr / kv_indices)", "把每个请求的槽位拼成一维数组，用前缀和定位。", "All requests' slots in one flat array, located by prefix sums.", "developer-guide.md"),
        ("Split-KV", "split-KV (flash-decoding)", "把长序列的 KV 切段并行算注意力，再用 log-sum-exp 合并。", "Attending over slices of a long KV in parallel, merged by log-sum-exp.", ""),
        ("在线 softmax", "online softmax", "分块计算 softmax 时随时更新最大值和分母。", "Updating the running max and denominator while computing softmax in blocks.", ""),
        ("对数求和指数", "log-sum-exp (LSE)", "log Σ exp(x)，合并分段注意力的权重。", "log Σ exp(x), used to merge attention computed in slices.", ""),
        ("FlashAttention", "FlashAttention", "分块、不落地注意力矩阵的快速注意力算法。", "A fast attention algorithm that tiles and never materialises the score matrix.", ""),
        ("屋顶线模型", "roofline model", "用算力与带宽上限估计一个程序的最快速度。", "Bounding a program's speed by peak compute and bandwidth.", ""),
        ("主机同步", "host sync", "CPU 等待 GPU 结果；每步越少越好（采样器每步只有一次）。", "The CPU waiting for GPU results; fewer is better (the sampler does one per step).", SA + "sampler.Sampler.__call__"),
        ("显存", "GPU memory (HBM)", "GPU 上的高带宽内存，存权重与 KV。", "The GPU's high-bandwidth memory holding weights and KV.", ""),
        ("NCCL", "NCCL", "NVIDIA 的多 GPU 集合通信库（张量并行用）。", "NVIDIA's multi-GPU collective communication library (for tensor parallelism).", ""),
    ]),
    ("工程与工具", "Engineering and tools", [
        ("PyTorch", "PyTorch", "minisgl 使用的张量与神经网络库。", "The tensor and neural-network library minisgl is written in.", ""),
        ("transformers", "transformers", "Hugging Face 的模型库；minisgl 用它读配置、分词器，并作为正确性标准。", "Hugging Face's model library; minisgl uses it for configs, tokenizers, and as the correctness yardstick.", ""),
        ("SGLang", "SGLang", "minisgl 模仿的生产级推理引擎。", "The production inference engine minisgl imitates.", ""),
        ("vLLM", "vLLM", "另一个生产级推理引擎，提出了 PagedAttention。", "Another production engine, which introduced PagedAttention.", ""),
        ("文件头", "file header", "每个模块开头的双语说明（这是什么、比喻、架构……）。", "The bilingual description opening every module (what, metaphor, architecture, ...).", "developer-guide.md"),
        ("随机小模型", "tiny random checkpoint", "测试时现场造的 HF 格式小模型。", "A tiny HF-format model made on the spot for tests.", E + "testing.make_tiny_checkpoint"),
        ("自带小模型", "bundled model (tiny-zh-en)", "model_path=None 时使用的离线小模型。", "The offline tiny model used when model_path=None.", E + "server_args.BUNDLED_MODEL"),
        ("与 HF 逐 token 对比", "HF equivalence test", "贪心输出与 transformers.generate() 逐 token 相同的测试。", "The test that greedy output equals transformers' generate() token for token.", "developer-guide.md"),
        ("性质测试", "property-based testing (hypothesis)", "随机生成操作序列检查不变量的测试方法。", "Testing invariants on randomly generated operation sequences.", "08-kv-cache.md"),
        ("不变量", "invariant", "任何时候都必须成立的条件，如 总量 = 可驱逐 + 受保护。", "A condition that must always hold, e.g. total = evictable + protected.", M + "radix_cache.RadixCache"),
        ("内存泄漏", "memory leak", "用完没还的槽位；check_pool_whole 检查它。", "Slots never returned; check_pool_whole looks for them.", S + "scheduler.Scheduler.check_pool_whole"),
        ("基准测试", "benchmark", "测量吞吐与延迟的程序（bench/）。", "A program measuring throughput and latency (bench/).", ""),
        ("可编辑安装", "editable install", "pip install -e：改代码立即生效。", "pip install -e: code changes take effect immediately.", "00-welcome.md"),
        ("约束文件", "constraints file", "pip -c：钉住 torch 版本，防止被替换。", "pip -c: pins the torch version so nothing replaces it.", "00-welcome.md"),
        ("附加依赖", "extras", "pyproject 里的可选依赖组：server、docs、dev。", "Optional dependency groups in pyproject: server, docs, dev.", "00-welcome.md"),
        ("持续集成", "continuous integration (CI)", "每次提交自动运行 .ci/run 的全部测试。", "Running all tests via .ci/run on every submission.", "00-welcome.md"),
        ("MkDocs", "MkDocs", "本站的静态站点生成器。", "The static site generator of this site.", "developer-guide.md"),
        ("mkdocstrings", "mkdocstrings", "从 docstring 生成 API 页的插件。", "The plugin generating API pages from docstrings.", "api/index.md"),
        ("锚点", "anchor", "页面内的位置标识；API 锚点即符号的完整路径。", "A position id in a page; API anchors are full symbol paths.", "api/index.md"),
        ("Jupyter 笔记本", "Jupyter notebook", "可执行的教学文档（notebooks/）。", "Executable teaching documents (notebooks/).", "developer-guide.md"),
        ("日志级别", "log level", "--log-level：debug、info、warning、error。", "--log-level: debug, info, warning, error.", E + "server_args.ServerArgs.log_level"),
        ("Prometheus 指标", "Prometheus metrics", "/metrics 暴露的计数器与直方图（--enable-metrics）。", "Counters and histograms exposed at /metrics (--enable-metrics).", E + "server_args.ServerArgs.enable_metrics"),
        ("API 密钥", "API key", "需要 Authorization: Bearer <key> 才能访问服务器。", "Requires Authorization: Bearer <key> to use the server.", E + "server_args.ServerArgs.api_key"),
    ]),
]


def terms():
    return [t for _, _, items in SECTIONS for t in items]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(lang: str) -> str:
    n = len(terms())
    if lang == "zh":
        out = [
            "# 10 · 术语表 / Glossary",
            "",
            f"本页收录 {n} 个术语：中文、英文、一句话解释，以及它在代码里的位置（API 锚点）或讲它的章节。",
            "术语按主题分组；用浏览器的页内搜索（或本站的搜索框）查找。",
            "",
            "本页由 `python docs/scripts/glossary.py` 生成，请修改那里的列表而不是本页。",
            "",
        ]
    else:
        out = [
            "# 10 · Glossary",
            "",
            f"This page lists {n} terms: English, Chinese, a one-line explanation, and where the term lives in the code",
            "(an API anchor) or the chapter that teaches it. Terms are grouped by topic; use your browser's find (or this",
            "site's search box) to look one up.",
            "",
            "This page is generated by `python docs/scripts/glossary.py`: edit the list there, not this page.",
            "",
        ]
    for zh_title, en_title, items in SECTIONS:
        out.append(f"## {zh_title} / {en_title}" if lang == "zh" else f"## {en_title} / {zh_title}")
        out.append("")
        if lang == "zh":
            out += ["| 中文 | English | 解释 | 代码 / 章节 |", "|---|---|---|---|"]
        else:
            out += ["| English | 中文 | Explanation | Code / chapter |", "|---|---|---|---|"]
        for zh, en, zh_exp, en_exp, link in items:
            label = _link_label(link, lang)
            cell = f"[{label}]({link})" if link else ""
            if lang == "zh":
                out.append(f"| {_cell(zh)} | {_cell(en)} | {_cell(zh_exp)} | {cell} |")
            else:
                out.append(f"| {_cell(en)} | {_cell(zh)} | {_cell(en_exp)} | {cell} |")
        out.append("")
    out += _code_section(lang)
    return "\n".join(out)


def _link_label(link: str, lang: str) -> str:
    if "#minisgl." in link:
        return "`" + link.split("#minisgl.")[1] + "`"
    if link.startswith("api/"):
        return "API"
    if link:
        if link[0].isdigit():
            return f"第 {link[:2]} 章" if lang == "zh" else f"ch. {link[:2]}"
        return "开发者指南" if lang == "zh" else "developer guide"
    return ""


def _code_section(lang: str):
    if lang == "zh":
        return [
            "## 代码实现 / Code Implementation",
            "",
            "### 核心文件 / Core Files",
            "",
            "| 文件 | 关键类 / 函数 | 链接 |",
            "|---|---|---|",
            "| `docs/scripts/glossary.py` | `SECTIONS`、`render` | [源码](https://github.com/minisgl/minisgl/blob/main/docs/scripts/glossary.py) |",
            "| `tests/test_docs.py` | 检查本页与生成结果一致、至少 200 个术语、每个链接有效 | [源码](https://github.com/minisgl/minisgl/blob/main/tests/test_docs.py) |",
            "",
            "### 架构 / Architecture",
            "",
            "```",
            "docs/scripts/glossary.py (SECTIONS) ──render('zh')──► docs/zh/10-glossary.md",
            "                                   └─render('en')──► docs/en/10-glossary.md",
            "tests/test_docs.py ── 比较 render() 与页面；链接检查 → importlib + getattr",
            "```",
            "",
            "### 关键代码逻辑 / Key Code Logic",
            "",
            "1. 每个术语是 `(中文, English, 中文解释, English explanation, 链接)`；链接相对本页：API 锚点或章节文件。",
            "2. `render(lang)` 生成中文页（中文列在前）或英文页（英文列在前），两页术语完全相同。",
            "3. 代码里的名字（`Req.kv_len`、`RadixCache.match_prefix` ……）链接到 [API 参考](api/index.md) 的锚点，由测试确认存在。",
            "",
            "### 集成点 / Integration Points",
            "",
            "- 加术语：编辑 `SECTIONS`，运行 `python docs/scripts/glossary.py`，再运行 `python -m pytest -q tests/test_docs.py`。",
            "- 各章第一次出现一个术语时写成 `中文 (English)`，与本页一致。",
            "",
        ]
    return [
        "## 代码实现 / Code Implementation",
        "",
        "### 核心文件 / Core Files",
        "",
        "| File | Key classes / functions | Link |",
        "|---|---|---|",
        "| `docs/scripts/glossary.py` | `SECTIONS`, `render` | [source](https://github.com/minisgl/minisgl/blob/main/docs/scripts/glossary.py) |",
        "| `tests/test_docs.py` | checks this page equals the rendered one, holds at least 200 terms, and every link resolves | [source](https://github.com/minisgl/minisgl/blob/main/tests/test_docs.py) |",
        "",
        "### 架构 / Architecture",
        "",
        "```",
        "docs/scripts/glossary.py (SECTIONS) ──render('zh')──► docs/zh/10-glossary.md",
        "                                   └─render('en')──► docs/en/10-glossary.md",
        "tests/test_docs.py ── compares render() with the pages; link check → importlib + getattr",
        "```",
        "",
        "### 关键代码逻辑 / Key Code Logic",
        "",
        "1. Each term is `(中文, English, Chinese explanation, English explanation, link)`; links are relative to this page: an API anchor or a chapter file.",
        "2. `render(lang)` writes the Chinese page (Chinese column first) or the English page (English column first); both hold exactly the same terms.",
        "3. Names from the code (`Req.kv_len`, `RadixCache.match_prefix`, ...) link to anchors of the [API reference](api/index.md), which the tests confirm exist.",
        "",
        "### 集成点 / Integration Points",
        "",
        "- To add a term: edit `SECTIONS`, run `python docs/scripts/glossary.py`, then `python -m pytest -q tests/test_docs.py`.",
        "- Chapters write a term as `中文 (English)` the first time it appears, matching this page.",
        "",
    ]


def main() -> None:
    docs = Path(__file__).resolve().parents[1]
    for lang in ("zh", "en"):
        (docs / lang / "10-glossary.md").write_text(render(lang), encoding="utf-8")
    print(f"{len(terms())} terms written to docs/zh/10-glossary.md and docs/en/10-glossary.md")


if __name__ == "__main__":
    main()
