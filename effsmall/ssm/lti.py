"""Linear time-invariant (LTI) state space models: one model, two ways to compute it.

Continuous time (S4, {cite}`gu2022s4` §2):

    h'(t) = A h(t) + B u(t),        y(t) = C h(t) + D u(t),

with state h ∈ R^N, scalar input u and output y. Sampling with step Δ gives the discrete
recurrence (``discretize``)

    h_t = Ā h_{t-1} + B̄ u_t,        y_t = C h_t + D u_t,

and, unrolling it from h_{-1} = 0, a causal convolution with the kernel K_k = C Ā^k B̄:

    y_t = Σ_{k=0}^{t} K_k u_{t-k} + D u_t.

The recurrence (``ssm_recurrent``) costs O(L N^2) time and O(N) memory and is sequential;
the convolution (``ssm_kernel`` + ``ssm_convolution``) costs O(L N^2) once for K, then
O(L log L) with the FFT, and is parallel over t. ``LTISSMLayer`` is a batched,
multi-channel layer that trains with the FFT convolution and decodes with the recurrence.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["discretize", "ssm_recurrent", "ssm_kernel", "ssm_convolution", "LTISSMLayer"]


# --------------------------------------------------------------------------- checks
def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_abc(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor | None = None) -> int:
    _check_float("A", A)
    _check_float("B", B)
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square (..., N, N), got shape {tuple(A.shape)}")
    N = A.shape[-1]
    if B.shape[-2:] != (N, 1):
        raise ValueError(f"B must have shape (..., {N}, 1) to match A, got {tuple(B.shape)}")
    if C is not None:
        _check_float("C", C)
        if C.shape[-2:] != (1, N):
            raise ValueError(f"C must have shape (..., 1, {N}) to match A, got {tuple(C.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t is not None and (t.dtype != A.dtype or t.device != A.device):
            raise TypeError(f"{name} must have A's dtype and device ({A.dtype}, {A.device}), "
                            f"got ({t.dtype}, {t.device})")
    return N


# --------------------------------------------------------------------------- discretization
def discretize(A: torch.Tensor, B: torch.Tensor, dt, method: str = "zoh"):
    """Continuous (A, B) → discrete (Ā, B̄) for step Δ = ``dt``.

    * ``"zoh"`` (zero-order hold: u constant over each step):
      Ā = exp(ΔA),  B̄ = (∫_0^Δ exp(sA) ds) B = A^{-1}(exp(ΔA) − I) B  when A is invertible.
      We never invert A: the exponential of the augmented (N+1)×(N+1) matrix

          exp(Δ [[A, B], [0, 0]]) = [[Ā, B̄], [0, 1]]

      gives both blocks at once and is exact for singular A too (e.g. A = 0 ⇒ B̄ = ΔB).
    * ``"bilinear"`` (Tustin / trapezoid, used by S4):
      Ā = (I − ΔA/2)^{-1}(I + ΔA/2),  B̄ = (I − ΔA/2)^{-1} ΔB.

    Shapes: A ``(..., N, N)``, B ``(..., N, 1)``, ``dt`` a float or a tensor broadcastable to
    the leading dims ``(...)``. Returns ``(A_bar (..., N, N), B_bar (..., N, 1))``.
    """
    N = _check_abc(A, B)
    dt = torch.as_tensor(dt, dtype=A.dtype, device=A.device)
    if (dt <= 0).any():
        raise ValueError("dt must be positive")
    dt = dt[..., None, None]                                  # (..., 1, 1)
    if method == "zoh":
        lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2], dt.shape[:-2])
        aug = A.new_zeros(*lead, N + 1, N + 1)                # (..., N+1, N+1)
        aug[..., :N, :N] = A
        aug[..., :N, N:] = B
        E = torch.linalg.matrix_exp(dt * aug)                 # (..., N+1, N+1)
        return E[..., :N, :N], E[..., :N, N:]                 # (..., N, N), (..., N, 1)
    if method == "bilinear":
        I = torch.eye(N, dtype=A.dtype, device=A.device)
        left = I - dt / 2 * A                                 # (..., N, N)
        A_bar = torch.linalg.solve(left, I + dt / 2 * A)      # (..., N, N)
        B_bar = torch.linalg.solve(left, dt * B)              # (..., N, 1)
        return A_bar, B_bar
    raise ValueError(f"method must be 'zoh' or 'bilinear', got {method!r}")


# --------------------------------------------------------------------------- the recurrence
def ssm_recurrent(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, D, u: torch.Tensor):
    """y_t = C h_t + D u_t with h_t = Ā h_{t-1} + B̄ u_t, h_{-1} = 0: one step at a time.

    O(L N^2) time, O(N) memory, L sequential steps. Shapes: Ā (N, N), B̄ (N, 1), C (1, N),
    D scalar or (1, 1), u (L,). Returns y (L,).
    """
    N = _check_abc(A_bar, B_bar, C)
    _check_float("u", u)
    if u.dim() != 1:
        raise ValueError(f"u must be 1-D (L,), got shape {tuple(u.shape)}")
    D = torch.as_tensor(D, dtype=u.dtype, device=u.device).reshape(())  # ()
    h = u.new_zeros(N, 1)                                     # (N, 1)
    ys = []
    for t in range(u.shape[0]):
        h = A_bar @ h + B_bar * u[t]                          # (N, 1)
        ys.append((C @ h).reshape(()) + D * u[t])             # ()
    return torch.stack(ys) if ys else u.new_zeros(0)          # (L,)


# --------------------------------------------------------------------------- the convolution
def ssm_kernel(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int,
               diagonal: bool | None = None):
    """The convolution kernel K_k = C Ā^k B̄ for k = 0 … L−1.

    General Ā: apply Ā to the vector B̄ L−1 times (L matrix–vector products, O(L N^2)) —
    never form Ā^k. When Ā is diagonal (``diagonal=None`` detects it), K is a Vandermonde
    product: K_k = Σ_n C_n B̄_n ā_n^k, all k at once in O(L N) (the S4D fast path).
    Returns K (L,).
    """
    N = _check_abc(A_bar, B_bar, C)
    if not isinstance(L, int) or L < 0:
        raise ValueError(f"L must be a non-negative int, got {L!r}")
    if diagonal is None:
        diagonal = bool(torch.equal(A_bar, torch.diag_embed(torch.diagonal(A_bar))))
    if diagonal:
        a = torch.diagonal(A_bar)                             # (N,)
        k = torch.arange(L, device=a.device, dtype=a.dtype)   # (L,)
        powers = a[:, None] ** k[None, :]                     # (N, L)  Vandermonde
        return (C[0] * B_bar[:, 0]) @ powers                  # (L,)
    v = B_bar                                                 # (N, 1) = Ā^0 B̄
    K = []
    for _ in range(L):
        K.append((C @ v).reshape(()))                         # ()
        v = A_bar @ v                                         # (N, 1)
    return torch.stack(K) if K else A_bar.new_zeros(0)        # (L,)


def ssm_convolution(u: torch.Tensor, K: torch.Tensor, method: str = "fft"):
    """Causal convolution y_t = Σ_{k=0}^{t} K_k u_{t−k} (no D·u term).

    ``"direct"``: a Toeplitz matrix–vector product, O(L^2). ``"fft"``: zero-pad both to 2L
    (so the circular convolution of the FFT equals the linear one on the first L outputs),
    multiply spectra, O(L log L). Works on leading batch dims: u (..., L), K (..., L).
    """
    _check_float("u", u)
    _check_float("K", K)
    if u.shape[-1] != K.shape[-1]:
        raise ValueError(f"u and K must have the same length, got {u.shape[-1]} and {K.shape[-1]}")
    L = u.shape[-1]
    if method == "direct":
        idx = torch.arange(L, device=u.device)
        lag = idx[:, None] - idx[None, :]                     # (L, L): t − s
        T = K[..., lag.clamp(min=0)] * (lag >= 0)             # (..., L, L) Toeplitz, causal
        return (T @ u[..., None])[..., 0]                     # (..., L)
    if method == "fft":
        n = 2 * L
        Uf = torch.fft.rfft(u, n=n)                           # (..., L+1) complex
        Kf = torch.fft.rfft(K, n=n)                           # (..., L+1) complex
        return torch.fft.irfft(Uf * Kf, n=n)[..., :L]         # (..., L)
    raise ValueError(f"method must be 'direct' or 'fft', got {method!r}")


# --------------------------------------------------------------------------- the layer
class LTISSMLayer(nn.Module):
    """H independent single-input/single-output LTI SSMs, one per channel (as in S4D/S4).

    Parameters per channel h: A (diagonal ``-exp(A_log)`` so every mode decays, or a full
    N×N matrix), B (N,), C (N,), skip D, and a learnable ``log_dt`` initialised log-uniformly
    in [dt_min, dt_max]. ``forward`` (training, whole sequence) discretizes with ZOH, builds
    each channel's kernel K (H, L) and convolves with the FFT in O(H L log L); ``step``
    (decoding) advances the recurrence one token in O(H N^2) (O(H N) when diagonal). Both
    compute y = K * u + D u exactly.

    Input/output ``(B, L, H)``; decode state ``(B, H, N)``.
    """

    def __init__(self, H: int, N: int = 16, *, diagonal: bool = True,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dtype=None, device=None):
        super().__init__()
        if H < 1 or N < 1:
            raise ValueError(f"H and N must be positive, got H={H}, N={N}")
        kw = dict(dtype=dtype or torch.get_default_dtype(), device=device)
        self.H, self.N, self.diagonal = H, N, diagonal
        if diagonal:
            # S4D-Real initialisation: a_n = -(n + 1/2).
            a = torch.arange(N, **kw) + 0.5
            self.A_log = nn.Parameter(torch.log(a).repeat(H, 1))           # (H, N)
        else:
            # Stable full matrices: −I plus a small random part.
            M = -torch.eye(N, **kw) + 0.3 * torch.randn(H, N, N, **kw) / math.sqrt(N)
            self.A = nn.Parameter(M)                                       # (H, N, N)
        self.B = nn.Parameter(torch.ones(H, N, **kw))                      # (H, N)
        self.C = nn.Parameter(torch.randn(H, N, **kw) / math.sqrt(N))      # (H, N)
        self.D = nn.Parameter(torch.ones(H, **kw))                         # (H,)
        u = torch.rand(H, **kw)
        self.log_dt = nn.Parameter(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))

    # Ā, B̄ for every channel ------------------------------------------------------------
    def discrete(self):
        """Return (Ā, B̄): ((H, N) diagonal entries or (H, N, N), (H, N)) by ZOH."""
        dt = self.log_dt.exp()                                             # (H,)
        if self.diagonal:
            a = -self.A_log.exp()                                          # (H, N), a < 0
            A_bar = torch.exp(dt[:, None] * a)                             # (H, N)
            B_bar = (A_bar - 1) / a * self.B                               # (H, N) = a⁻¹(e^{Δa}−1)B
            return A_bar, B_bar
        A_bar, B_bar = discretize(self.A, self.B[..., None], dt)           # (H,N,N), (H,N,1)
        return A_bar, B_bar[..., 0]                                        # (H,N,N), (H,N)

    def kernel(self, L: int) -> torch.Tensor:
        """K (H, L) with K[h, k] = C_h Ā_h^k B̄_h."""
        A_bar, B_bar = self.discrete()
        if self.diagonal:
            k = torch.arange(L, device=A_bar.device, dtype=A_bar.dtype)    # (L,)
            powers = A_bar[..., None] ** k                                 # (H, N, L)
            return torch.einsum("hn,hnl->hl", self.C * B_bar, powers)      # (H, L)
        v, K = B_bar, []                                                   # (H, N)
        for _ in range(L):
            K.append((self.C * v).sum(-1))                                 # (H,)
            v = torch.einsum("hij,hj->hi", A_bar, v)                       # (H, N)
        return torch.stack(K, dim=-1)                                      # (H, L)

    def _check_input(self, x: torch.Tensor, rank: int, what: str) -> None:
        _check_float("x", x)
        if x.dim() != rank or x.shape[-1] != self.H:
            raise ValueError(f"x must have shape {what} with H={self.H}, got {tuple(x.shape)}")
        if x.dtype != self.D.dtype or x.device != self.D.device:
            raise TypeError(f"x must have the layer's dtype/device ({self.D.dtype}, "
                            f"{self.D.device}), got ({x.dtype}, {x.device})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training path: y = K * x + D x by FFT convolution. x (B, L, H) → y (B, L, H)."""
        self._check_input(x, 3, "(B, L, H)")
        L = x.shape[1]
        K = self.kernel(L)                                                 # (H, L)
        y = ssm_convolution(x.transpose(1, 2), K, method="fft")            # (B, H, L)
        return y.transpose(1, 2) + self.D * x                              # (B, L, H)

    def init_state(self, batch: int) -> torch.Tensor:
        return self.D.new_zeros(batch, self.H, self.N)                     # (B, H, N)

    def step(self, x_t: torch.Tensor, state: torch.Tensor):
        """Decoding path: one token. x_t (B, H), state (B, H, N) → (y_t (B, H), new state)."""
        self._check_input(x_t, 2, "(B, H)")
        if state.shape != (x_t.shape[0], self.H, self.N):
            raise ValueError(f"state must have shape {(x_t.shape[0], self.H, self.N)}, "
                             f"got {tuple(state.shape)}")
        A_bar, B_bar = self.discrete()
        if self.diagonal:
            state = A_bar * state + B_bar * x_t[..., None]                 # (B, H, N)
        else:
            state = torch.einsum("hij,bhj->bhi", A_bar, state) + B_bar * x_t[..., None]
        y = (state * self.C).sum(-1) + self.D * x_t                        # (B, H)
        return y, state
