// The thread count of every native parallel region: num_threads = 0 ("all cores"), explicit
// requests, and the one-thread rule in processes forked after OpenMP started its threads.
#pragma once

#include <string>

namespace recfuse {

// A call's num_threads: as requested, or for 0 ("all cores") OpenMP's default team size
// (OMP_NUM_THREADS, else the processors), but never more than the processors this process may
// run on (its CPU affinity, and the CPU quota of its cgroup: docker --cpus, Kubernetes CPU
// limits, which libgomp does not read): with OMP_NUM_THREADS=100000 the top-k packing asked
// libgomp for a team of 100000 and the interpreter crashed, where no call had asked for more
// than a few. 1 in a process forked after a team started (see forked_after_threads). Every
// parallel region takes its size from here.
int resolve_threads(int requested);

// What num_threads = 0 stands for, as a question (for reports): asks for no team, so a
// process that only asks keeps its forked children's threads.
int available_threads();

// The CPUs a cgroup CPU quota allows, rounded up, or 0 where none is set or readable: the
// smallest of cgroup v2's cpu.max and cgroup v1's cpu.cfs_quota_us / cpu.cfs_period_us over
// the process's group (from `self_cgroup`, normally /proc/self/cgroup), its ancestors and
// `root` itself (normally /sys/fs/cgroup; v1 under root/cpu). Read once by
// available_threads.
int cgroup_cpu_limit(const std::string& root, const std::string& self_cgroup);

// True in a process forked (os.fork, multiprocessing's "fork" start method, a pre-forking
// server) from one whose native calls had asked for more than one thread: GNU libgomp keeps
// its parent's thread pool in its books but the threads do not survive fork, so the child's
// first parallel region would wait for them for ever. Such a child runs every region on one
// thread.
bool forked_after_threads();

// Records that a thread team of GNU libgomp may exist besides recfuse's own: another user of
// the same libgomp (numba's omp threading layer) started one. A child forked after it then
// runs on one thread, as after recfuse's own teams.
void note_thread_team();

}  // namespace recfuse
