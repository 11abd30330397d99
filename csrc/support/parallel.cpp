// parallel.cpp — a tiny persistent thread pool for parallel_tasks.
//
// Workers sleep on a condition variable between calls. A call publishes a task function and a
// task count; the caller and the workers pull task indices from an atomic counter. The caller
// never waits for a worker that has not started: once every task is taken it closes the call,
// and waits only for the workers that joined before that (they hold tasks). A worker the OS
// has not scheduled yet -- on a 2-core machine, typically because torch's OpenMP threads are
// still spinning after torch's last parallel region -- then costs nothing: the caller does its
// share. (Which thread runs a task never changes a result: see parallel.h.) One call runs at
// a time; a concurrent call (another Python thread) or a nested one runs inline instead of
// waiting, so nothing can deadlock. After fork() the child starts with a fresh, empty pool.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <pthread.h>

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

void forget_pool_in_child() { g_pool = nullptr; }  // the parent's threads do not exist here

Pool& pool() {
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, forget_pool_in_child); });
  if (!g_pool) g_pool = new Pool();  // intentionally never destroyed (safe at interpreter exit)
  return *g_pool;
}

}  // namespace

void parallel_tasks(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& task) {
  if (ntasks <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(std::max(1, nthreads), ntasks));
  if (threads > 1 && !t_in_pool_task && pool().try_run(ntasks, threads, task)) return;
  for (int64_t i = 0; i < ntasks; ++i) task(i);
}

}  // namespace cpu
}  // namespace lenet5
