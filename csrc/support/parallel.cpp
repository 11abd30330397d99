// parallel.cpp — where parallel_tasks runs its tasks: OpenMP's team when the process has one
// (torch's libgomp), else a tiny persistent pool of our own.
//
// OpenMP's team. torch runs its own ops (the optimizer step, the loss, autograd's additions) on
// OpenMP, whose workers spin for a while after each parallel region (libgomp's default wait
// policy). On 2 cores a pool of our own then competes with a spinning worker for the second core
// between torch's regions and ours, and a training step runs mostly on one core (measured: see
// ARCHITECTURE.md). So when torch's OpenMP runtime is in the process (GOMP_parallel, found with
// dlsym), a call runs as one OpenMP parallel region of nthreads threads: the worker that is
// spinning takes our tasks at once. The tasks are the same either way: results never depend on
// which thread runs a task (parallel.h). LENET5_FAST_OWN_POOL=1 in the environment keeps our own
// pool (read once); a forked child always uses our own pool (OpenMP's threads were not copied).
// OpenMP's closing barrier waits for every team thread, started or not: when a call finds its
// other threads descheduled (they had taken no task when the caller had taken the last one, and
// arrived more than 100 us later), the next 64 calls use our own pool instead.
//
// Our own pool. Workers sleep on a condition variable between calls. A call publishes a task
// function and a task count; the caller and the workers pull task indices from an atomic counter.
// The caller never waits for a worker that has not started: once every task is taken it closes
// the call, and waits only for the workers that joined before that (they hold tasks). A worker
// the OS has not scheduled yet then costs nothing: the caller does its share.
//
// Either way one call runs at a time; a concurrent call (another Python thread) or a nested one
// runs inline instead of waiting, so nothing can deadlock. After fork() the child starts with a
// fresh, empty pool.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <dlfcn.h>
#include <mutex>
#include <thread>
#include <pthread.h>
#include <string>

#include "support/parallel.h"

namespace lenet5 {
namespace cpu {
namespace {

thread_local bool t_in_pool_task = false;

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  bool try_run(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& task) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    const int helpers = std::max(0, nthreads - 1);
    grow(helpers);
    {
      std::lock_guard<std::mutex> lk(m_);
      task_ = &task;
      ntasks_ = ntasks;
      next_.store(0);
      want_ = helpers;
      open_ = true;
      ++generation_;
    }
    cv_.notify_all();
    work();  // returns when every task has been taken
    std::unique_lock<std::mutex> lk(m_);
    open_ = false;  // workers that wake up from now on find nothing to do
    done_cv_.wait(lk, [&] { return active_ == 0; });
    task_ = nullptr;
    return true;
  }

 private:
  void grow(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index] { loop(index); });
    }
  }
  void work() {
    t_in_pool_task = true;
    for (int64_t i; (i = next_.fetch_add(1)) < ntasks_;) (*task_)(i);
    t_in_pool_task = false;
  }
  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || (generation_ != seen && index < want_); });
        if (stop_) return;
        seen = generation_;
        if (!open_) continue;  // too late: the caller has taken every task
        ++active_;
      }
      work();
      std::lock_guard<std::mutex> lk(m_);
      if (--active_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex run_mutex_, m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t ntasks_ = 0;
  std::atomic<int64_t> next_{0};
  int want_ = 0, active_ = 0;  // active_: workers inside the current call
  bool open_ = false;          // whether workers may still join the current call
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool* g_pool = nullptr;
std::once_flag g_atfork_once;

bool g_forked = false;
void forget_pool_in_child() {  // the parent's threads (ours and OpenMP's) do not exist here
  g_pool = nullptr;
  g_forked = true;
}

Pool& pool() {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, forget_pool_in_child); });
  if (!g_pool) g_pool = new Pool();  // intentionally never destroyed (safe at interpreter exit)
  return *g_pool;
}

// OpenMP's team: libgomp's entry point of `#pragma omp parallel` (LLVM's and Intel's runtimes
// export it too), or null when no OpenMP runtime is loaded, LENET5_FAST_OWN_POOL=1 is set, or
// this is a forked child.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
GompParallel openmp_team() {
  static const GompParallel found = [] {
    const char* own = std::getenv("LENET5_FAST_OWN_POOL");
    if (own && *own && std::string(own) != "0") return GompParallel(nullptr);
    return reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
  }();
  return g_forked ? nullptr : found;
}
std::atomic<bool> g_team_busy{false};
// A team call whose other threads had not started by the time the caller had taken every task,
// and that then held the caller up for more than kLateWorker at the closing barrier (they were
// descheduled: a loaded machine), sends the next kOwnPoolCalls calls to our own pool, whose
// caller never waits for a worker that has not started.
constexpr double kLateWorker = 100e-6;
constexpr int kOwnPoolCalls = 64;
std::atomic<int> g_own_pool_calls{0};
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
struct TeamCall {
  const std::function<void(int64_t)>* task;
  int64_t ntasks;
  std::thread::id caller;
  std::atomic<int64_t> next{0};
  std::atomic<int> joined{0};  // team threads other than the caller that have started
  bool alone = false;          // the caller took the last task before any other thread started
  double caller_done = 0;
};
void team_body(void* p) {
  TeamCall& c = *static_cast<TeamCall*>(p);
  const bool caller = std::this_thread::get_id() == c.caller;
  if (!caller) c.joined.fetch_add(1);
  t_in_pool_task = true;
  for (int64_t i; (i = c.next.fetch_add(1)) < c.ntasks;) (*c.task)(i);
  t_in_pool_task = false;
  if (caller) {
    c.alone = c.joined.load() == 0;
    c.caller_done = now_s();
  }
}
bool try_run_on_team(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& task) {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, forget_pool_in_child); });
  const GompParallel team = openmp_team();
  if (!team) return false;
  if (g_own_pool_calls.load(std::memory_order_relaxed) > 0) {
    g_own_pool_calls.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  if (g_team_busy.exchange(true)) return false;
  TeamCall call{&task, ntasks, std::this_thread::get_id()};
  team(team_body, &call, static_cast<unsigned>(nthreads), 0);
  if (call.alone && now_s() - call.caller_done > kLateWorker) g_own_pool_calls.store(kOwnPoolCalls);
  g_team_busy.store(false);
  return true;
}

}  // namespace

void parallel_tasks(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& task) {
  if (ntasks <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(std::max(1, nthreads), ntasks));
  if (threads > 1 && !t_in_pool_task && (try_run_on_team(ntasks, threads, task) || pool().try_run(ntasks, threads, task)))
    return;
  for (int64_t i = 0; i < ntasks; ++i) task(i);
}

}  // namespace cpu
}  // namespace lenet5
