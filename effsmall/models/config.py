"""One configuration for the three language models of chapter 12."""
from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("transformer", "mamba2", "hybrid")


@dataclass
class LMConfig:
    """Shapes of a small LM. ``arch`` picks which layers are attention and which Mamba-2:

    - ``"transformer"``: all layers attention;
    - ``"mamba2"``: all layers Mamba-2 (SSD);
    - ``"hybrid"``: layer i is attention when ``i % attn_every == attn_every // 2`` (one
      attention layer in the middle of every group of ``attn_every``, as Jamba places it
      {cite}`lieber2024jamba`), Mamba-2 otherwise.

    Every layer is ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (pre-norm residual); set
    ``d_ff=0`` for mixer-only layers (the plain Mamba-2 stack).
    """

    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 4
    arch: str = "transformer"
    # attention
    n_heads: int = 4
    n_kv_heads: int | None = None      # GQA when < n_heads (None: = n_heads)
    rope_base: float = 10000.0
    # MLP (SwiGLU); None: the multiple of 32 nearest to 8/3·d_model (same params as a 4·d GELU MLP)
    d_ff: int | None = None
    # Mamba-2
    d_state: int = 32
    headdim: int = 32
    expand: int = 2
    d_conv: int = 4
    chunk_size: int = 32
    # hybrid
    attn_every: int = 2
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_state", "headdim", "expand",
                     "d_conv", "chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"the head size d_model/n_heads={self.d_model // self.n_heads} must be even (RoPE)")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if not isinstance(self.attn_every, int) or self.attn_every < 1:
            raise ValueError(f"attn_every (k) must be an int >= 1, got {self.attn_every!r}")
        if (self.expand * self.d_model) % self.headdim:
            raise ValueError(f"expand·d_model={self.expand * self.d_model} must be divisible by "
                             f"headdim={self.headdim}")
        if self.d_ff is None:
            self.d_ff = max(32, round(8 * self.d_model / 3 / 32) * 32)
        if self.d_ff < 0:
            raise ValueError(f"d_ff must be >= 0, got {self.d_ff}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def is_attention(self, i: int) -> bool:
        """Whether layer ``i`` is an attention layer."""
        if self.arch == "transformer":
            return True
        if self.arch == "mamba2":
            return False
        return i % self.attn_every == self.attn_every // 2

    def layer_kinds(self) -> list[str]:
        return ["attention" if self.is_attention(i) else "mamba2" for i in range(self.n_layers)]
