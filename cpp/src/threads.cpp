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
  omp_set_num_threads(1);  // for a parallel region without a num_threads clause, if any
}

const bool fork_handler_installed = pthread_atfork(nullptr, nullptr, &on_fork_child) == 0;

int noted(int threads) {
  if (threads > 1) team_requested.store(true, std::memory_order_relaxed);
  return threads;
}

// The tighter of two CPU limits, where 0 stands for none.
int tighter(int a, int b) { return a > 0 && (b == 0 || a < b) ? a : b; }

// quota / period rounded up (1.5 CPUs: 2 threads), 0 unless both are positive.
int ceil_ratio(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>(std::min<long long>((quota + period - 1) / period, 1 << 20));
}

// cgroup v2's "<quota> <period>" or "max <period>" in `dir`/cpu.max.
int cpu_max_limit(const std::string& dir) {
  std::ifstream file(dir + "/cpu.max");
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

// cgroup v1's CFS quota in `dir` (-1: none).
int cfs_quota_limit(const std::string& dir) {
  return ceil_ratio(read_number(dir + "/cpu.cfs_quota_us"),
                    read_number(dir + "/cpu.cfs_period_us"));
}

// The smallest limit of `group` (a path such as "/a/b", "/" or "") and its ancestors under
// `dir`, down to `dir` itself; 0 where none is limited (absent files do not limit).
int smallest_limit(const std::string& dir, std::string group, int (*limit_in)(const std::string&)) {
  int smallest = 0;
  for (;;) {
    smallest = tighter(limit_in(dir + group), smallest);
    if (group.empty()) return smallest;
    const size_t slash = group.rfind('/');
    group = slash == std::string::npos ? "" : group.substr(0, slash);
  }
}

// Whether the comma-separated controllers of a cgroup v1 line include `name`.
bool has_controller(const std::string& controllers, const std::string& name) {
  std::stringstream list(controllers);
  for (std::string each; std::getline(list, each, ',');) {
    if (each == name) return true;
  }
  return false;
}

}  // namespace

int cgroup_cpu_limit(const std::string& root, const std::string& self_cgroup) {
  // The process's groups ("0::/path" for v2, "N:cpu,...:/path" for v1). Without a cgroup
  // namespace they name the group's place under `root`; inside a container's namespace (or
  // a v1 container whose own group is mounted as the root) the root is its group, which the
  // walk down to `root` reads as well.
  std::string v2_group, v1_group;
  std::ifstream groups(self_cgroup);
  for (std::string line; std::getline(groups, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (line.compare(0, first, "0") == 0 && controllers.empty()) v2_group = path;
    if (has_controller(controllers, "cpu")) v1_group = path;
  }
  return tighter(smallest_limit(root, v2_group, cpu_max_limit),
                 smallest_limit(root + "/cpu", v1_group, cfs_quota_limit));
}

bool forked_after_threads() {
  (void)fork_handler_installed;
  return forked_child.load(std::memory_order_relaxed);
}

int available_threads() {
  if (forked_after_threads()) return 1;
  static const int quota = cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup");
  int threads = std::min(omp_get_max_threads(), omp_get_num_procs());
  if (quota > 0) threads = std::min(threads, quota);
  return std::max(1, threads);
}

int resolve_threads(int requested) {
  if (forked_after_threads()) return 1;
  return noted(requested > 0 ? requested : available_threads());
}

}  // namespace recfuse
