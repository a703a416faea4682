// emu_sched.cpp — the block scheduler of cuda_emu.h: blocks run one after another; the threads
// of a block are ucontexts run round-robin, each until it finishes or reaches __syncthreads();
// when every thread waits at the barrier they all continue. A barrier reached by some threads
// while others have finished is a kernel bug (divergent __syncthreads) and aborts.
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <vector>

#include "cuda_emu.h"

dim3 emu_gridDim, emu_blockDim;
uint3 emu_blockIdx, emu_threadIdx;

namespace {

enum { RUNNING = 0, AT_BARRIER = 1, DONE = 2 };

struct emu_thread {
  ucontext_t ctx;
  char *stack = nullptr;
  int state = DONE;
  uint3 idx{};
};

constexpr size_t kStack = 64 * 1024;
ucontext_t g_sched;
std::vector<emu_thread> g_threads;
const std::function<void()> *g_body = nullptr;
unsigned g_cur = 0, g_nthreads = 0;

void trampoline() {
  (*g_body)();
  g_threads[g_cur].state = DONE; // uc_link returns to the scheduler
}

} // namespace

unsigned emu_linear_tid(void) { return g_cur; }
unsigned emu_block_threads(void) { return g_nthreads; }

static bool g_simple = false;

void emu_syncthreads(void) {
  if (g_simple) {
    fprintf(stderr, "emu: __syncthreads in a kernel launched without thread contexts\n");
    abort();
  }
  emu_thread &t = g_threads[g_cur];
  t.state = AT_BARRIER;
  swapcontext(&t.ctx, &g_sched);
}

static void check_config(dim3 grid, dim3 block) {
  unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || block.z > 64) {
    fprintf(stderr, "emu_launch: invalid configuration grid (%u,%u,%u) block (%u,%u,%u)\n",
            grid.x, grid.y, grid.z, block.x, block.y, block.z);
    abort();
  }
}

void emu_launch_simple(dim3 grid, dim3 block, const std::function<void()> &body) {
  check_config(grid, block);
  unsigned nt = block.x * block.y * block.z;
  emu_gridDim = grid;
  emu_blockDim = block;
  g_nthreads = nt;
  g_simple = true;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        emu_blockIdx = uint3{bx, by, bz};
        for (unsigned i = 0; i < nt; i++) {
          g_cur = i;
          emu_threadIdx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
          body();
        }
      }
  g_simple = false;
}

void emu_launch(dim3 grid, dim3 block, const std::function<void()> &body) {
  check_config(grid, block);
  unsigned nt = block.x * block.y * block.z;
  if (g_threads.size() < nt) g_threads.resize(nt);
  for (unsigned i = 0; i < nt; i++)
    if (g_threads[i].stack == nullptr) g_threads[i].stack = static_cast<char *>(malloc(kStack));
  emu_gridDim = grid;
  emu_blockDim = block;
  g_body = &body;
  g_nthreads = nt;
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        emu_blockIdx = uint3{bx, by, bz};
        for (unsigned i = 0; i < nt; i++) {
          emu_thread &t = g_threads[i];
          getcontext(&t.ctx);
          t.ctx.uc_stack.ss_sp = t.stack;
          t.ctx.uc_stack.ss_size = kStack;
          t.ctx.uc_link = &g_sched;
          makecontext(&t.ctx, trampoline, 0);
          t.state = RUNNING;
          t.idx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
        }
        for (;;) {
          for (unsigned i = 0; i < nt; i++) {
            if (g_threads[i].state != RUNNING) continue;
            g_cur = i;
            emu_threadIdx = g_threads[i].idx;
            swapcontext(&g_sched, &g_threads[i].ctx);
          }
          unsigned done = 0, waiting = 0;
          for (unsigned i = 0; i < nt; i++) {
            done += g_threads[i].state == DONE;
            waiting += g_threads[i].state == AT_BARRIER;
          }
          if (done == nt) break;
          if (done != 0) {
            fprintf(stderr, "emu_launch: divergent __syncthreads in block (%u,%u,%u): %u threads "
                            "finished, %u wait at a barrier\n", bx, by, bz, done, waiting);
            abort();
          }
          for (unsigned i = 0; i < nt; i++) g_threads[i].state = RUNNING;
        }
      }
}
