/* Run a program and report its wall time and peak RSS on the given fd.
 *
 * Why a C launcher: the kernel carries the parent's memory high-water mark
 * into a forked child across exec, so a child forked from Python reports
 * Python's RSS. Forked from this small program, the floor is this program's
 * own ~1 MiB, which is reported separately (run it on /bin/true) so it can
 * be told apart. stdin/stdout/stderr pass through to the program.
 *
 * With --netns PATH the child enters that network namespace before exec,
 * as a runtime running in it would (nsenter would add its own exec). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: spawn_rss REPORT_FD [--netns PATH] PROGRAM [ARGS...]\n");
        return 2;
    }
    const char *netns = NULL;
    int prog = 2;
    if (argc > 4 && strcmp(argv[2], "--netns") == 0) {
        netns = argv[3];
        prog = 4;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) {
        if (netns) {
            int fd = open(netns, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) _exit(126);
        }
        execv(argv[prog], argv + prog);
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
