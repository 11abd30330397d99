// cuda_emu.cpp — the emulated CUDA device's runtime (what it emulates: cuda_emu.h).
//
// Layout: one Device per OS thread that launches: a pool of fibers (one per thread of the
// largest block so far, each with its own stack, reused from block to block), the state of the
// block being run (ready list, barrier, one exchange per warp, the shared-memory arena) and the
// last error.
// Trick: a fiber runs its kernel thread until it has to wait (barrier, shuffle) or returns, then
// switches straight to a ready fiber picked at random; a rendezvous that completes makes its
// waiters ready. When none is ready, control returns to the host (run_block): either every
// thread has returned, or the rest wait for a rendezvous that can never complete (a divergent
// barrier or shuffle): the launch fails, and each waiting fiber is resumed to throw Abort, which
// unwinds it back to its loop in fiber_main. The sanitizers are told of every switch:
// AddressSanitizer through __sanitizer_{start,finish}_switch_fiber; ThreadSanitizer by a TSan
// fiber per thread, switched without synchronisation, so happens-before comes only from the
// launch (release/acquire around each block) and from each barrier. This file itself is not
// instrumented by TSan: its bookkeeping is shared by the fibers as the hardware's would be.
#include "cuda_emu/cuda_emu.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif
#if defined(__SANITIZE_THREAD__) || defined(LENET5_CUDA_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#define EMU_TSAN 1
#else
#define EMU_TSAN 0
#endif
// The context switch: hand-written on x86-64, ucontext elsewhere (slower: a system call per
// switch); LENET5_CUDA_EMU_UCONTEXT picks ucontext on x86-64 too.
#if defined(__x86_64__) && !defined(LENET5_CUDA_EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

namespace cuda_emu {

thread_local const Coords* here = nullptr;

namespace {

constexpr size_t kStackBytes = 256 << 10;   // per fiber (reserved, touched on demand)
constexpr size_t kSharedLimit = 48 << 10;   // static shared memory per block
constexpr size_t kFence = 64;                // poisoned bytes around each shared array
constexpr unsigned kMaxThreads = 1024;

// ---- context switch: saves the callee-saved registers on the current stack, stores the stack
// pointer in *from, loads `to` and pops the same registers from there ----
#if EMU_ASM_SWITCH
extern "C" void cuda_emu_switch(void** from, void* to);
asm(R"(
.text
.p2align 4
.globl cuda_emu_switch
.hidden cuda_emu_switch
.type cuda_emu_switch,@function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cuda_emu_switch,.-cuda_emu_switch
)");
#endif

struct Abort {};  // thrown in a waiting fiber to unwind it when its launch has failed

struct Device;
// One emulated thread; `here` points at it (at its coordinates) while it runs.
struct Fiber : Coords {
  Device* device = nullptr;
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
#if !EMU_ASM_SWITCH
  ucontext_t uc;
#endif
  void* tsan = nullptr;       // TSan's fiber
  void* asan_fake = nullptr;  // ASan's fake stack while switched out
  enum State { kReady, kBarrier, kWarp, kDone } state = kDone;
  const char* waits_at = nullptr;
  unsigned shared_seen = 0;  // LENET5_SHARED declarations this thread has passed
  Fiber() = default;
  Fiber(const Fiber&) = delete;
  ~Fiber();
};

// The running emulated thread (in a fiber: `here` points at it).
Fiber& running() { return *static_cast<Fiber*>(const_cast<Coords*>(here)); }

struct Warp {
  unsigned arrived = 0, gen = 0;
  const char* at = nullptr;
  Shfl kind = Shfl::kDown;
  uint64_t slot[2][32] = {};  // the lanes' values, by parity of gen
};

struct SharedArray {
  const char* where;
  char* p;
  size_t bytes;
};

struct Device {
  std::vector<std::unique_ptr<Fiber>> fibers;
  Fiber host;
  Fiber* running = nullptr;  // null: the host
  std::vector<Fiber*> ready;
  const void* host_bottom = nullptr;  // ASan: the host thread's stack
  size_t host_size = 0;
  // the launch
  void (*body)(void*) = nullptr;
  void* args = nullptr;
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  // the block
  unsigned nthreads = 0, done = 0;
  unsigned bar_arrived = 0, bar_gen = 0;
  const char* bar_at = nullptr;
  char bar_sync[2] = {};                // TSan sync objects, by parity of bar_gen
  char block_start = 0, block_end = 0;  // TSan sync objects: host -> block -> host
  Warp warps[kMaxThreads / 32];
  std::vector<char> arena;
  size_t arena_used = 0;
  std::vector<SharedArray> shared;
  size_t shared_bytes = 0;
  bool aborting = false;
  std::string error;
  // the last error, as cudaGetLastError reports it
  cudaError_t last = cudaSuccess;
  std::string message;
  Device() {
#if EMU_TSAN
    host.tsan = __tsan_get_current_fiber();
#endif
#if EMU_ASAN
    pthread_attr_t attr;
    void* addr = nullptr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      pthread_attr_getstack(&attr, &addr, &host_size);
      pthread_attr_destroy(&attr);
    }
    host_bottom = addr;
#endif
  }
};

thread_local std::unique_ptr<Device> tl_device;
Device& device() {
  if (!tl_device) tl_device.reset(new Device);
  return *tl_device;
}

uint64_t next_random(Device& d) {  // xorshift64*
  d.rng ^= d.rng >> 12;
  d.rng ^= d.rng << 25;
  d.rng ^= d.rng >> 27;
  return d.rng * 0x2545f4914f6cdd1dull;
}

std::string where_str(const Coords& c) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", c.block.x, c.block.y, c.block.z, c.thread.x,
                c.thread.y, c.thread.z);
  return buf;
}

void fiber_main();

// Switches from `from` (the running context) to `to`.
void switch_to(Device& d, Fiber& from, Fiber& to) {
  d.running = &to == &d.host ? nullptr : &to;
  here = d.running;
#if EMU_ASAN
  const bool to_host = &to == &d.host;
  __sanitizer_start_switch_fiber(&from.asan_fake, to_host ? d.host_bottom : to.stack,
                                 to_host ? d.host_size : kStackBytes);
#endif
#if EMU_TSAN
  __tsan_switch_to_fiber(to.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if EMU_ASM_SWITCH
  cuda_emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(from.asan_fake, nullptr, nullptr);
#endif
}

// Passes control from `self` (a fiber that now waits or has returned, or the host) to a ready
// fiber picked at random, or back to the host when none is ready.
void yield(Device& d, Fiber& self) {
  Fiber* next = &d.host;
  if (!d.ready.empty()) {
    const size_t i = next_random(d) % d.ready.size();
    next = d.ready[i];
    d.ready[i] = d.ready.back();
    d.ready.pop_back();
  }
  if (next != &self) switch_to(d, self, *next);
}

void make_ready(Device& d, Fiber& f) {
  f.state = Fiber::kReady;
  d.ready.push_back(&f);
}

Fiber::~Fiber() {
  if (!stack) return;  // the host
  munmap(stack - 4096, kStackBytes + 4096);
#if EMU_TSAN
  __tsan_destroy_fiber(tsan);
#endif
}

Fiber& new_fiber(Device& d) {
  std::unique_ptr<Fiber> f(new Fiber);
  f->device = &d;
  // A guard page below the stack turns an overflow into a crash, not a silent overwrite.
  void* m = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map a fiber stack");
  mprotect(m, 4096, PROT_NONE);
  f->stack = static_cast<char*>(m) + 4096;
#if EMU_ASM_SWITCH
  // The frame cuda_emu_switch pops: mxcsr and x87 control words (their defaults), six registers,
  // then it returns into fiber_main, with a null return address above that.
  uint64_t* top = reinterpret_cast<uint64_t*>(f->stack + kStackBytes);
  top[-1] = 0;
  top[-2] = reinterpret_cast<uint64_t>(&fiber_main);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;
  top[-9] = 0x037F00001F80ull;
  f->sp = top - 9;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack;
  f->uc.uc_stack.ss_size = kStackBytes;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, &fiber_main, 0);
#endif
#if EMU_TSAN
  f->tsan = __tsan_create_fiber(0);
#endif
  d.fibers.push_back(std::move(f));
  return *d.fibers.back();
}

// Every fiber's first frame: one kernel thread per block, forever.
void fiber_main() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Fiber& self = running();
  Device& d = *self.device;
  for (;;) {
#if EMU_TSAN
    __tsan_acquire(&d.block_start);
#endif
    try {
      if (!d.aborting) d.body(d.args);
    } catch (const Abort&) {
    } catch (const std::exception& e) {
      if (!d.aborting) d.aborting = true, d.error = std::string("a thread threw: ") + e.what();
    }
#if EMU_TSAN
    __tsan_release(&d.block_end);
#endif
    self.state = Fiber::kDone;
    ++d.done;
    yield(d, self);
  }
}

// In a fiber: waits until a rendezvous makes it ready again.
void wait(Device& d, Fiber& f, Fiber::State why, const char* where) {
  f.state = why;
  f.waits_at = where;
  yield(d, f);
  if (d.aborting) throw Abort{};
}

[[noreturn]] void fail(Device& d, const std::string& what) {
  if (!d.aborting) d.aborting = true, d.error = what;
  throw Abort{};
}

// "csrc/cuda/x.cu:12" of a __FILE__ ":" __LINE__ string.
std::string site(const char* where) {
  const char* s = std::strstr(where, "csrc/");
  return s ? s : where;
}

// Runs one block: every thread to its end.
void run_block(Device& d, const dim3& grid, const dim3& block, const uint3& b) {
  const unsigned n = d.nthreads;
  d.ready.clear();
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = *d.fibers[t];
    f.thread = uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
    f.block = b;
    f.block_dim = block;
    f.grid_dim = grid;
    f.waits_at = nullptr;
    f.shared_seen = 0;
    make_ready(d, f);
  }
  d.done = 0;
  d.bar_arrived = 0;
  for (unsigned w = 0; w < (n + 31) / 32; ++w) d.warps[w].arrived = 0;
  // Fresh shared memory: 0xff bytes, all poisoned until LENET5_SHARED hands an array out.
#if EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(d.arena.data(), d.arena.size());
#endif
  std::memset(d.arena.data(), 0xff, d.arena_used);
#if EMU_ASAN
  ASAN_POISON_MEMORY_REGION(d.arena.data(), d.arena.size());
#endif
  d.arena_used = 0;
  d.shared.clear();
  d.shared_bytes = 0;
#if EMU_TSAN
  __tsan_release(&d.block_start);
#endif
  for (;;) {
    yield(d, d.host);  // back here when no thread is ready
    if (d.done == n) break;
    if (!d.aborting) {
      // Threads wait at barriers or shuffles that the others will never reach.
      std::map<std::string, unsigned> waits;
      for (unsigned t = 0; t < n; ++t) {
        const Fiber& f = *d.fibers[t];
        waits[f.state == Fiber::kDone      ? std::string("returned")
              : f.state == Fiber::kBarrier ? "wait at __syncthreads " + site(f.waits_at)
                                           : "wait at a shuffle " + site(f.waits_at)]++;
      }
      d.aborting = true;
      d.error = "divergent barrier or shuffle in block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," +
                std::to_string(b.z) + "):";
      for (const auto& w : waits) d.error += " " + std::to_string(w.second) + " threads " + w.first + ";";
    }
    for (unsigned t = 0; t < n; ++t)  // each waiting thread throws Abort when resumed
      if (d.fibers[t]->state != Fiber::kDone && d.fibers[t]->state != Fiber::kReady) make_ready(d, *d.fibers[t]);
  }
#if EMU_TSAN
  __tsan_acquire(&d.block_end);
#endif
}

void set_error(Device& d, cudaError_t e, const std::string& msg) {
  if (d.last == cudaSuccess) d.last = e, d.message = msg;
}

std::mutex log_mutex;
bool log_on = false;
std::vector<LaunchRecord> launch_log;

bool config_ok(const dim3& g, const dim3& b) {
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  return threads >= 1 && threads <= kMaxThreads && b.x <= 1024 && b.y <= 1024 && b.z <= 64 && g.x >= 1 &&
         g.y >= 1 && g.z >= 1 && g.x <= 0x7fffffffu && g.y <= 65535 && g.z <= 65535;
}

}  // namespace

void syncthreads(const char* where) {
  Fiber& f = running();
  Device& d = *f.device;
  if (d.bar_arrived == 0) {
    d.bar_at = where;
  } else if (d.bar_at != where && std::strcmp(d.bar_at, where) != 0) {
    fail(d, "divergent __syncthreads: " + where_str(f) + " waits at " + site(where) + ", others at " +
                site(d.bar_at));
  }
  [[maybe_unused]] const unsigned gen = d.bar_gen;
#if EMU_TSAN
  __tsan_release(&d.bar_sync[gen & 1]);
#endif
  if (++d.bar_arrived == d.nthreads) {
    d.bar_arrived = 0;
    ++d.bar_gen;
    for (unsigned t = 0; t < d.nthreads; ++t)
      if (d.fibers[t]->state == Fiber::kBarrier) make_ready(d, *d.fibers[t]);
  } else {
    wait(d, f, Fiber::kBarrier, where);
  }
#if EMU_TSAN
  __tsan_acquire(&d.bar_sync[gen & 1]);
#endif
}

uint64_t shuffle(unsigned mask, uint64_t bits, Shfl kind, unsigned arg, const char* where) {
  Fiber& f = running();
  Device& d = *f.device;
  const Coords& c = f;
  const unsigned tid = c.thread.x + c.block_dim.x * (c.thread.y + c.block_dim.y * c.thread.z);
  const unsigned lane = tid & 31, w = tid >> 5;
  if (mask != 0xffffffffu)
    fail(d, "shuffle at " + site(where) + " with mask " + std::to_string(mask) +
                ": only full-mask shuffles are emulated");
  if ((w + 1) * 32 > d.nthreads)
    fail(d, "full-mask shuffle at " + site(where) + " in a warp of " + std::to_string(d.nthreads - w * 32) +
                " threads (block of " + std::to_string(d.nthreads) + ")");
  Warp& wp = d.warps[w];
  if (wp.arrived == 0) {
    wp.at = where;
    wp.kind = kind;
  } else if ((wp.at != where && std::strcmp(wp.at, where) != 0) || wp.kind != kind) {
    fail(d, "divergent shuffle: " + where_str(c) + " at " + site(where) + ", other lanes at " + site(wp.at));
  }
  const unsigned gen = wp.gen;
  wp.slot[gen & 1][lane] = bits;
  if (++wp.arrived == 32) {
    wp.arrived = 0;
    ++wp.gen;
    for (unsigned t = w * 32; t < w * 32 + 32; ++t)
      if (d.fibers[t]->state == Fiber::kWarp) make_ready(d, *d.fibers[t]);
  } else {
    wait(d, f, Fiber::kWarp, where);
  }
  unsigned src = kind == Shfl::kDown ? lane + arg : lane ^ arg;
  if (src >= 32) src = lane;  // out of the warp: the lane's own value, as the hardware does
  return wp.slot[gen & 1][src];
}

void* shared(size_t bytes, const char* where) {
  Fiber& f = running();
  Device& d = *f.device;
  const unsigned k = f.shared_seen++;
  if (k < d.shared.size()) {  // declared by another thread of the block already
    const SharedArray& s = d.shared[k];
    if (std::strcmp(s.where, where) != 0 || s.bytes != bytes)
      fail(d, "threads of a block declared different shared memory: " + site(where) + " and " + site(s.where));
    return s.p;
  }
  d.shared_bytes += bytes;
  if (d.shared_bytes > kSharedLimit)
    fail(d, "static shared memory of " + std::to_string(d.shared_bytes) + " bytes (over 48 KiB) at " + site(where));
  const size_t at = (d.arena_used + kFence + 15) & ~size_t(15);
  char* p = d.arena.data() + at;
  d.arena_used = at + bytes;
#if EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#endif
  d.shared.push_back({where, p, bytes});
  return p;
}

void launch(const char* kernel, dim3 grid, dim3 block, size_t dynamic_smem, void (*body)(void*), void* args) {
  Device& d = device();
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    if (log_on) launch_log.push_back({kernel, grid, block});
  }
  if (!config_ok(grid, block) || dynamic_smem > kSharedLimit) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "invalid configuration argument: %s with grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of shared memory",
                  kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic_smem);
    return set_error(d, cudaErrorInvalidConfiguration, buf);
  }
  if (d.running) throw std::logic_error("cuda_emu: a launch from inside a kernel");
  const unsigned n = block.x * block.y * block.z;
  while (d.fibers.size() < n) new_fiber(d);
  if (d.arena.empty()) {
    d.arena.resize(kSharedLimit + 64 * kFence);
    d.arena_used = d.arena.size();  // the first block fills it all
  }
  d.body = body;
  d.args = args;
  d.nthreads = n;
  d.aborting = false;
  d.error.clear();
  // The blocks in a random order: b -> (a b + c) mod total, with a coprime to total.
  const uint64_t total = uint64_t(grid.x) * grid.y * grid.z;
  uint64_t a = 1;
  if (total > 1)
    do a = next_random(d) % total; while (std::gcd(a, total) != 1);
  const uint64_t c = next_random(d) % total;
  for (uint64_t i = 0; i < total && !d.aborting; ++i) {
    const uint64_t b = uint64_t((static_cast<unsigned __int128>(a) * i + c) % total);
    run_block(d, grid, block,
              uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))});
  }
  if (d.aborting)
    set_error(d, cudaErrorLaunchFailure, std::string("unspecified launch failure: ") + kernel + ": " + d.error);
  d.aborting = false;
}

// ---- controls for the test module ----
std::vector<LaunchRecord> record_launches(bool on) {
  std::lock_guard<std::mutex> lock(log_mutex);
  log_on = on;
  std::vector<LaunchRecord> out;
  out.swap(launch_log);
  return out;
}

}  // namespace cuda_emu

cudaError_t cudaGetLastError() {
  cuda_emu::Device& d = cuda_emu::device();
  const cudaError_t e = d.last;
  d.last = cudaSuccess;
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  return cuda_emu::device().message.c_str();
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
