#include "recfuse/threads.hpp"

#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <string>

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

namespace {

// quota / period rounded up (1.5 CPUs: 2 threads), 0 unless both are positive.
int ceil_ratio(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>(std::min<long long>((quota + period - 1) / period, 1 << 20));
}

// cgroup v2's "<quota> <period>" or "max <period>".
int cpu_max_limit(const std::string& path) {
  std::ifstream file(path);
  std::string quota;
  long long period = 0;
  if (!(file >> quota >> period) || quota == "max") return 0;
  try {
    return ceil_ratio(std::stoll(quota), period);
  } catch (const std::exception&) {
    return 0;
  }
}

long long read_number(const std::string& path) {
  std::ifstream file(path);
  long long value = 0;
  return file >> value ? value : 0;
}

}  // namespace

int cgroup_cpu_limit(const std::string& root, const std::string& self_cgroup) {
  // v2: the process's own group ("0::/path" in /proc/self/cgroup), then the root as mounted
  // (inside a container's cgroup namespace the container's group is the root).
  std::ifstream groups(self_cgroup);
  for (std::string line; std::getline(groups, line);) {
    if (line.rfind("0::", 0) == 0 && line.size() > 4) {
      if (const int limit = cpu_max_limit(root + line.substr(3) + "/cpu.max")) return limit;
    }
  }
  if (const int limit = cpu_max_limit(root + "/cpu.max")) return limit;
  // v1: the cpu controller's CFS quota (-1: none).
  return ceil_ratio(read_number(root + "/cpu/cpu.cfs_quota_us"),
                    read_number(root + "/cpu/cpu.cfs_period_us"));
}

int default_threads() {
  if (forked_after_threads()) return 1;
  static const int quota = cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup");
  int threads = std::min(omp_get_max_threads(), omp_get_num_procs());
  if (quota > 0) threads = std::min(threads, quota);
  return noted(std::max(1, threads));
}

int resolve_threads(int requested) {
  if (forked_after_threads()) return 1;
  return requested > 0 ? noted(requested) : default_threads();
}

}  // namespace recfuse
