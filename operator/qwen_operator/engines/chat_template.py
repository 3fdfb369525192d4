"""A Qwen3 chat template that does not think unless asked: ``spec.runtime.reasoning: disabled``.

Why a template: Qwen3's hybrid thinking is switched by its chat template. Its own template
renders an empty thinking block (``<think>\\n\\n</think>\\n\\n``) after the assistant header when
the caller passes ``enable_thinking=False`` (Qwen's model card: "a strict switch"), and the
model then answers without reasoning. Neither engine lets a deployment set that default on
the image we ship: TGI renders the template with ``messages``, ``bos_token``, ``eos_token``,
``add_generation_prompt`` and ``tools`` only (``router/src/infer/chat_template.rs``) and has no
``chat_template_kwargs``; vLLM's ``--default-chat-template-kwargs`` arrived in
vllm-project/vllm#31343 (Dec 2025), after our default image v0.10.1.1. Both accept a whole
template: TGI reads ``chat_template`` from the file ``--tokenizer-config-path`` names (a
``tokenizer_config.json``; a ``chat_template.json`` in the model directory would still win,
Qwen3 repositories ship none), vLLM reads ``--chat-template FILE``.

What this template does (the text is ours; the ChatML frame, the ``<tools>`` / ``<tool_call>``
/ ``<tool_response>`` tags and the JSON call shape are the Hermes-style protocol Qwen3 was
trained on, as its model card and vLLM's ``hermes`` parser describe it):

* default: **no thinking** - the empty thinking block follows the assistant header;
* ``enable_thinking`` passed (vLLM ``chat_template_kwargs``) decides when present;
* otherwise the most recent ``/think`` or ``/no_think`` in a user or system message decides
  (Qwen3's soft switch), so TGI clients can still ask for thinking per request;
* earlier assistant turns lose their reasoning (Qwen: history keeps only final answers);
* ``tools`` are listed in the system turn, tool calls and ``tool`` results are rendered as
  Qwen3 expects them, consecutive tool results share one user turn.

Written for both Jinja engines: Python's jinja2 (vLLM, via transformers) and minijinja (TGI):
no Python slicing, only filters both have (``tojson``, ``last``, ``trim``), strings built with
explicit ``\\n`` escapes so whitespace control cannot eat a newline.
"""

from __future__ import annotations

import json

#: Directory in the pod (the server's ``/tmp`` emptyDir) the chat-template init container writes to.
CHAT_DIR = "/tmp/qwen-chat"
#: TGI: a tokenizer config holding only the template and the special tokens it uses.
TGI_TOKENIZER_CONFIG = f"{CHAT_DIR}/tokenizer_config.json"
#: vLLM: the bare Jinja template.
VLLM_CHAT_TEMPLATE = f"{CHAT_DIR}/qwen3-no-thinking.jinja"
#: Qwen3's end-of-turn token (its tokenizer_config.json ``eos_token``; it has no BOS token).
IM_END = "<|im_end|>"

NO_THINKING_TEMPLATE = (
    # 1. thinking mode for this request
    "{%- set ns = namespace(think=false) -%}"
    "{%- if enable_thinking is defined and enable_thinking is not none -%}"
    "{%- set ns.think = enable_thinking -%}"
    "{%- else -%}"
    "{%- for m in messages -%}"
    "{%- if m.role in ['user', 'system'] and m.content is string -%}"
    "{%- if '/no_think' in m.content -%}{%- set ns.think = false -%}"
    "{%- elif '/think' in m.content -%}{%- set ns.think = true -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    # 2. system turn, with the tool signatures when tools are offered
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0].role == 'system' -%}{{- messages[0].content ~ '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call functions to help with the request. Their signatures are inside"
    " <tools></tools>:\\n<tools>' -}}"
    "{%- for t in tools -%}{{- '\\n' ~ (t | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nTo call a function, answer with a JSON object holding its name and arguments inside"
    ' <tool_call></tool_call> tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\\n</tool_call><|im_end|>\\n' -}}"
    "{%- elif messages and messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' ~ messages[0].content ~ '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    # 3. the conversation
    "{%- for m in messages -%}"
    "{%- set text = m.content if m.content is string else '' -%}"
    "{%- if m.role == 'user' or (m.role == 'system' and not loop.first) -%}"
    "{{- '<|im_start|>' ~ m.role ~ '\\n' ~ text ~ '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- if '</think>' in text -%}{%- set text = (text.split('</think>') | last) | trim -%}{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' ~ text -}}"
    "{%- if m.tool_calls -%}"
    "{%- for call in m.tool_calls -%}"
    "{%- set f = call.function if call.function is defined else call -%}"
    "{%- set args = f.arguments if f.arguments is string else (f.arguments | tojson) -%}"
    "{%- if text or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' ~ f.name ~ '\", \"arguments\": ' ~ args ~ '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' ~ text ~ '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    # 4. the reply: an empty thinking block unless this request thinks
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if not ns.think -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def tgi_tokenizer_config() -> str:
    """The file TGI's ``--tokenizer-config-path`` reads (its ``HubTokenizerConfig`` fields)."""
    return json.dumps({"chat_template": NO_THINKING_TEMPLATE, "bos_token": None, "eos_token": IM_END}, indent=1)
