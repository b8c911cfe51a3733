/* Run a program and report its wall time and peak RSS on the given fd.
 *
 * Why a C launcher: the kernel carries the parent's memory high-water mark
 * into a forked child across exec, so a child forked from Python reports
 * Python's RSS. Forked from this small program, the floor is this program's
 * own ~1 MiB, which is reported separately (run it on /bin/true) so it can
 * be told apart. stdin/stdout/stderr pass through to the program. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: spawn_rss REPORT_FD PROGRAM [ARGS...]\n");
        return 2;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) {
        execv(argv[2], argv + 2);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) return 2;
    clock_gettime(CLOCK_MONOTONIC, &b);
    long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    dprintf(atoi(argv[1]), "%lld %ld\n", ns, ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}
