#include "recfuse/threads.hpp"

#include <fcntl.h>
#include <omp.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
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

// The start of a small file ("" when it cannot be read), by read(2): no stream's formatted
// input, whose locale facets crashed (a null ctype facet) in a process whose libstdc++ was
// another than this module's (an NVIDIA PyTorch image's Python, 2026-11-29).
std::string read_head(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buffer[256];
  const ssize_t got = ::read(fd, buffer, sizeof buffer - 1);
  ::close(fd);
  return got > 0 ? std::string(buffer, static_cast<size_t>(got)) : "";
}

// The integer at `text`'s start after blanks; `*end` past it (== text when there is none,
// or when it is beyond long long).
long long leading_number(const char* text, const char** end) {
  char* stop = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &stop, 10);
  *end = errno == ERANGE ? text : stop;
  return value;
}

// cgroup v2's "<quota> <period>" or "max <period>" in `dir`/cpu.max.
int cpu_max_limit(const std::string& dir) {
  const std::string text = read_head(dir + "/cpu.max");
  const char* end = nullptr;
  const long long quota = leading_number(text.c_str(), &end);
  if (end == text.c_str()) return 0;  // "max" (no quota) or nothing readable
  const char* rest = end;
  const long long period = leading_number(rest, &end);
  return end == rest ? 0 : ceil_ratio(quota, period);
}

long long read_number(const std::string& path) {
  const std::string text = read_head(path);
  const char* end = nullptr;
  const long long value = leading_number(text.c_str(), &end);
  return end == text.c_str() ? 0 : value;
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

void note_thread_team() { team_requested.store(true, std::memory_order_relaxed); }

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

// An explicit count is used as given up to this many threads per processor (and at least
// kFewestCapped): beyond, threads only cost, each an OpenMP stack and per-thread scratch, and
// 65,536 of them crashed the process on a 2-core machine (num_threads goes up to 2^16).
constexpr int kThreadsPerProcessor = 8;
constexpr int kFewestCapped = 64;

int resolve_threads(int requested) {
  if (forked_after_threads()) return 1;
  if (requested <= 0) return noted(available_threads());
  const int most = std::max(kFewestCapped, kThreadsPerProcessor * omp_get_num_procs());
  return noted(std::min(requested, most));
}

}  // namespace recfuse
