import time, numpy as np
a = np.random.rand(1024, 1024).astype(np.float32); a @ a
t = time.perf_counter()
for _ in range(20): a @ a
print(f"numpy 1024x1024 SGEMM: {20 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9:.0f} GFLOP/s")
