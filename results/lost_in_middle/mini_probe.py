"""A throwaway probe, kept as evidence for docs/studies.md (Lost in the middle): a minimal
2-layer attention-only transformer (RMS-normalised, no parameters in the norms; RoPE or learned
absolute positions; AdamW with b2 0.95 and weight decay 0.1 at a constant learning rate, no
warmup, no clipping), written apart from llmlab's model and train step, on K-pair key-value recall
with one question and the loss on its answer:

  python results/lost_in_middle/mini_probe.py K rope|abs LR STEPS [MLP=0|1]

Not part of the library and not tested; see probes.md for what it gave.
"""
import sys, random, time
import numpy as np, jax, jax.numpy as jnp, optax
K = int(sys.argv[1]); POS = sys.argv[2]; LR = float(sys.argv[3]); STEPS = int(sys.argv[4])
MLP = int(sys.argv[5]) if len(sys.argv) > 5 else 0
V, D, H, L = 93, 64, 2, 2; Dh = D // H; T = 2 * K + 2
def batch(rng, n):
  x = np.zeros((n, T), np.int32); y = np.zeros(n, np.int32)
  for b in range(n):
    keys = rng.sample(range(3, 48), K); vals = [rng.randrange(48, 93) for _ in range(K)]
    g = rng.randrange(K); seq = []
    for kk, vv in zip(keys, vals): seq += [kk, vv]
    x[b] = seq + [1, keys[g]]; y[b] = vals[g]
  return x, y
def init(key):
  ks = jax.random.split(key, 8 * L + 4); i = iter(ks); s = 0.02
  p = {"emb": jax.random.normal(next(i), (V, D)) * s, "pos": jax.random.normal(next(i), (T, D)) * s,
       "out": jax.random.normal(next(i), (D, V)) * s, "layers": []}
  for _ in range(L):
    p["layers"].append({n: jax.random.normal(next(i), (D, D)) * s for n in ("q", "k", "v", "o")}
                       | {"w1": jax.random.normal(next(i), (D, 4 * D)) * s, "w2": jax.random.normal(next(i), (4 * D, D)) * s})
  return p
def rope(x):  # x (B, T, H, Dh)
  half = Dh // 2; freq = 10000.0 ** (-jnp.arange(half) / half); ang = jnp.arange(T)[:, None] * freq
  c, s_ = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
  a, b = x[..., :half], x[..., half:]
  return jnp.concatenate([a * c - b * s_, a * s_ + b * c], -1)
def norm(x): return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)
def fwd(p, x):
  h = p["emb"][x] + (p["pos"][None] if POS == "abs" else 0)
  mask = jnp.tril(jnp.ones((T, T), bool))
  for l in p["layers"]:
    z = norm(h); B = z.shape[0]
    q, k, v = [(z @ l[n]).reshape(B, T, H, Dh) for n in ("q", "k", "v")]
    if POS == "rope": q, k = rope(q), rope(k)
    att = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(Dh)
    att = jax.nn.softmax(jnp.where(mask, att, -1e9), -1)
    h = h + jnp.einsum("bhts,bshd->bthd", att, v).reshape(B, T, D) @ l["o"]
    if MLP: h = h + jax.nn.gelu(norm(h) @ l["w1"]) @ l["w2"]
  return norm(h[:, -1]) @ p["out"]
def loss(p, x, y):
  lg = fwd(p, x); return -jnp.mean(jax.nn.log_softmax(lg)[jnp.arange(len(y)), y]), jnp.mean(jnp.argmax(lg, -1) == y)
tx = optax.adamw(LR, b1=0.9, b2=0.95, weight_decay=0.1); p = init(jax.random.key(0)); st = tx.init(p)
@jax.jit
def step(p, st, x, y):
  (l, a), g = jax.value_and_grad(loss, has_aux=True)(p, x, y); u, st = tx.update(g, st, p)
  return optax.apply_updates(p, u), st, l, a
rng = random.Random(0); t0 = time.time()
for s in range(STEPS):
  x, y = batch(rng, 64); p, st, l, a = step(p, st, x, y)
  if (s + 1) % 250 == 0:
    xe, ye = batch(random.Random(9), 512); print(s + 1, f"loss {float(l):.3f} heldout acc {float(loss(p, xe, ye)[1]):.3f} {time.time()-t0:.0f}s", flush=True)
