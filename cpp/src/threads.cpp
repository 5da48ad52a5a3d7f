#include "recfuse/threads.hpp"

#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>

namespace recfuse {
namespace {

// Set once a call has asked for a team of more than one thread (libgomp then keeps a pool).
std::atomic<bool> team_requested{false};
std::atomic<bool> forked_child{false};

void on_fork_child() {
  if (!team_requested.load(std::memory_order_relaxed)) return;
  forked_child.store(true, std::memory_order_relaxed);
  omp_set_num_threads(1);  // regions that rely on the default team size
}

const bool fork_handler_installed = pthread_atfork(nullptr, nullptr, &on_fork_child) == 0;

int noted(int threads) {
  if (threads > 1) team_requested.store(true, std::memory_order_relaxed);
  return threads;
}

}  // namespace

bool forked_after_threads() {
  (void)fork_handler_installed;
  return forked_child.load(std::memory_order_relaxed);
}

int default_threads() {
  if (forked_after_threads()) return 1;
  return noted(std::max(1, std::min(omp_get_max_threads(), omp_get_num_procs())));
}

int resolve_threads(int requested) {
  if (forked_after_threads()) return 1;
  return requested > 0 ? noted(requested) : default_threads();
}

}  // namespace recfuse
