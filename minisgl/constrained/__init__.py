"""结构化输出：语法后端（第 11 章）。Structured output: grammar backends (chapter 11).

The xgrammar backend is imported lazily by create_grammar_backend, so minisgl runs without it.
"""
from minisgl.constrained.base_grammar_backend import (
    BaseGrammarBackend, BaseGrammarObject, InvalidGrammarError, create_grammar_backend, grammar_key,
)

__all__ = ["BaseGrammarBackend", "BaseGrammarObject", "InvalidGrammarError", "create_grammar_backend", "grammar_key"]
