/*
 * control_loop: a fixed-rate feedback loop over a socflow model, timing every
 * socflow_controller_control call.
 *
 *   control_loop MODEL [--f32] [--iterations N] [--rate HZ] [--no-sleep]
 *                [--sigma S] [--seed K] [--warmup W] [--rt]
 *
 * Each tick reads the state of a simulated plant, computes u = u(t, x) with the
 * model's controller and advances the plant by one period:
 *   - control_dim == state_dim: the model's own closed loop dz = u dt + sigma dW
 *     (the OT-Flow / NeuralSOC benchmark dynamics), so the states are the ones the
 *     controller was made for;
 *   - otherwise: the first min(d, m) coordinates are driven by u, all get noise.
 * Model time runs over the model's interval [t0, t1] in steps of dt = 1 / rate; at
 * the end of the interval an episode ends and the state restarts from a fresh
 * N(0, I) draw. The state sequence depends only on the seed, never on timing.
 *
 * Ticks start at absolute deadlines (clock_nanosleep(CLOCK_MONOTONIC,
 * TIMER_ABSTIME)), so the period does not drift; a tick whose work ends after the
 * next deadline is a missed deadline, and the loop skips to the next future period.
 * --no-sleep runs the ticks back to back (for benchmarks and valgrind).
 *
 * Everything is allocated before the loop; the loop itself allocates nothing.
 * --rt asks for mlockall, SCHED_FIFO and the least timer slack; what is not
 * permitted gets a note, never a failure.
 *
 * Output (one "key=value" list per line, for people and scripts):
 *   latency_us p50=... p99=... p99.9=... max=...
 *   missed_deadlines=K of N
 *   final t=... x=... u=...
 * Exit status: 0 on success, 1 on a socflow error (its status name and message are
 * printed), 2 on bad arguments, 3 on other failures.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <socflow.h>

#define NS_PER_S 1000000000LL
#define TWO_PI 6.283185307179586476925286766559

/* Prints the failed call, its status name and the library's message; exits 1. */
static void check(enum socflow_status st, const char *what) {
    if (st != SOCFLOW_OK) {
        fprintf(stderr, "control_loop: %s failed: %s: %s\n", what, socflow_status_name((int32_t)st),
                socflow_last_error());
        exit(1);
    }
}

static void usage(const char *msg) {
    if (msg != NULL) {
        fprintf(stderr, "control_loop: %s\n", msg);
    }
    fprintf(stderr,
            "usage: control_loop MODEL [--f32] [--iterations N] [--rate HZ] [--no-sleep]\n"
            "                    [--sigma S] [--seed K] [--warmup W] [--rt]\n"
            "  --f32           compute in single precision (inputs and outputs stay double)\n"
            "  --iterations N  ticks to run (default 5000)\n"
            "  --rate HZ       tick rate (default 1000)\n"
            "  --no-sleep      run the ticks back to back (no deadlines)\n"
            "  --sigma S       plant noise level (default 0.1)\n"
            "  --seed K        seed of the initial states and the noise (default 0)\n"
            "  --warmup W      untimed calls before the loop (default 100)\n"
            "  --rt            try mlockall, SCHED_FIFO and 1 ns timer slack (a note if not permitted)\n");
    exit(2);
}

static long long parse_count(const char *s, const char *opt, long long min) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min) {
        fprintf(stderr, "control_loop: %s needs an integer >= %lld, got '%s'\n", opt, min, s);
        usage(NULL);
    }
    return v;
}

static double parse_real(const char *s, const char *opt, double min_exclusive) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || !(v > min_exclusive)) {
        fprintf(stderr, "control_loop: %s needs a number > %g, got '%s'\n", opt, min_exclusive, s);
        usage(NULL);
    }
    return v;
}

/* splitmix64: a small, seedable generator (no allocation, no global state). */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]: 53 random bits, never 0 (for the logarithm below). */
static double uniform(uint64_t *s) {
    return (double)((next_u64(s) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* A standard normal draw (Box–Muller, one value per pair of uniforms). */
static double normal(uint64_t *s) {
    double u1 = uniform(s);
    double u2 = uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static struct timespec to_timespec(int64_t ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / NS_PER_S);
    ts.tv_nsec = (long)(ns % NS_PER_S);
    return ts;
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The p-th percentile of sorted values (nearest rank: the smallest value with at
 * least p% of the values at or below it), in microseconds. */
static double percentile_us(const int64_t *sorted, size_t n, double p) {
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    if (rank < 1) {
        rank = 1;
    }
    if (rank > n) {
        rank = n;
    }
    return (double)sorted[rank - 1] / 1000.0;
}

/* Asks for locked memory, a real-time priority and (Linux) 1 ns of timer slack;
 * notes what it did not get. */
static void try_realtime(void) {
#ifdef __linux__
    if (prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) != 0) {
        printf("realtime: note: timer slack unchanged (%s)\n", strerror(errno));
    }
#endif
    if (mlockall(MCL_CURRENT | MCL_FUTURE) == 0) {
        printf("realtime: memory locked (mlockall)\n");
    } else {
        printf("realtime: note: mlockall not permitted (%s); pages may fault in the loop\n",
               strerror(errno));
    }
    struct sched_param sp;
    memset(&sp, 0, sizeof sp);
    sp.sched_priority = sched_get_priority_max(SCHED_FIFO) / 2;
    if (sched_setscheduler(0, SCHED_FIFO, &sp) == 0) {
        printf("realtime: SCHED_FIFO priority %d\n", sp.sched_priority);
    } else {
        printf("realtime: note: SCHED_FIFO not permitted (%s); running at normal priority\n",
               strerror(errno));
    }
}

int main(int argc, char **argv) {
    const char *path = NULL;
    uint32_t precision = SOCFLOW_PRECISION_F64;
    long long iterations = 5000;
    double rate = 1000.0;
    int sleep_to_deadlines = 1;
    double sigma = 0.1;
    uint64_t seed = 0;
    long long warmup = 100;
    int realtime = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--f32") == 0) {
            precision = SOCFLOW_PRECISION_F32;
        } else if (strcmp(a, "--no-sleep") == 0) {
            sleep_to_deadlines = 0;
        } else if (strcmp(a, "--rt") == 0) {
            realtime = 1;
        } else if (strcmp(a, "--iterations") == 0 && has_value) {
            iterations = parse_count(argv[++i], a, 1);
        } else if (strcmp(a, "--rate") == 0 && has_value) {
            rate = parse_real(argv[++i], a, 0.0);
        } else if (strcmp(a, "--sigma") == 0 && has_value) {
            sigma = parse_real(argv[++i], a, -1.0);
            if (sigma < 0.0) {
                usage("--sigma needs a number >= 0");
            }
        } else if (strcmp(a, "--seed") == 0 && has_value) {
            seed = (uint64_t)parse_count(argv[++i], a, 0);
        } else if (strcmp(a, "--warmup") == 0 && has_value) {
            warmup = parse_count(argv[++i], a, 0);
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(NULL);
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "control_loop: unknown option or missing value: %s\n", a);
            usage(NULL);
        } else if (path == NULL) {
            path = a;
        } else {
            usage("more than one model path");
        }
    }
    if (path == NULL) {
        usage("no model path");
    }

    uint32_t major = 0;
    check(socflow_version_numbers(&major, NULL, NULL), "socflow_version_numbers");
    if (major != SOCFLOW_VERSION_MAJOR) {
        fprintf(stderr, "control_loop: library version %s does not match the header (%d.x)\n",
                socflow_version(), SOCFLOW_VERSION_MAJOR);
        return 3;
    }

    struct socflow_model model = {0};
    check(socflow_model_load(path, &model), "socflow_model_load");
    struct socflow_model_info info;
    check(socflow_model_get_info(model, &info), "socflow_model_get_info");
    struct socflow_controller ctl = {0};
    check(socflow_controller_create(model, precision, &ctl), "socflow_controller_create");
    /* The controller keeps what it needs: the model handle can go now. */
    check(socflow_model_destroy(model), "socflow_model_destroy");
    size_t d = 0, m = 0;
    check(socflow_controller_dims(ctl, &d, &m), "socflow_controller_dims");

    const int64_t period_ns = (int64_t)llround(1e9 / rate);
    if (period_ns < 1) {
        usage("--rate is too high (the period rounds to 0 ns)");
    }
    const double dt = 1.0 / rate;
    const double horizon = info.t1 - info.t0;
    long long episode = llround(horizon / dt);
    if (episode < 1) {
        episode = 1;
    }
    const double noise = sigma * sqrt(dt);
    const size_t n = (size_t)iterations;

    printf("socflow %s: model %s: d = %zu, %zu controls, %zu parameters, t in [%g, %g]\n",
           socflow_version(), path, d, m, info.parameter_count, info.t0, info.t1);
    printf("loop: %zu ticks at %g Hz (period %lld ns), %s, controller in %s, "
           "episodes of %lld ticks, plant %s, sigma %g\n",
           n, rate, (long long)period_ns,
           sleep_to_deadlines ? "absolute deadlines" : "back to back (--no-sleep)",
           precision == SOCFLOW_PRECISION_F32 ? "f32" : "f64", episode,
           m == d ? "dz = u dt + sigma dW" : "first min(d, m) coordinates driven by u", sigma);

    /* Everything the loop touches, allocated (and written, so it is paged in) now. */
    double *z = calloc(d, sizeof *z);
    double *u = calloc(m, sizeof *u);
    int64_t *latency = calloc(n, sizeof *latency);
    int64_t *late = calloc(n, sizeof *late);
    if (z == NULL || u == NULL || latency == NULL || late == NULL) {
        fprintf(stderr, "control_loop: out of memory for %zu ticks\n", n);
        return 3;
    }
    memset(latency, 0, n * sizeof *latency);
    memset(late, 0, n * sizeof *late);
    if (realtime) {
        try_realtime();
    }

    uint64_t rng = seed;
    for (size_t i = 0; i < d; i++) {
        z[i] = normal(&rng);
    }
    /* Untimed calls: fault in the library's code and the controller's scratch. */
    for (long long k = 0; k < warmup; k++) {
        check(socflow_controller_control(ctl, info.t0, z, d, u, m), "socflow_controller_control");
    }

    const size_t driven = m < d ? m : d;
    size_t missed = 0;
    double t = info.t0;
    int64_t next = now_ns() + period_ns;
    const int64_t start = now_ns();
    for (size_t k = 0; k < n; k++) {
        if (sleep_to_deadlines) {
            struct timespec ts = to_timespec(next);
            int rc;
            while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) == EINTR) {
            }
            if (rc != 0) {
                fprintf(stderr, "control_loop: clock_nanosleep: %s\n", strerror(rc));
                return 3;
            }
        }
        const long long j = (long long)(k % (size_t)episode);
        if (j == 0 && k > 0) {
            for (size_t i = 0; i < d; i++) {
                z[i] = normal(&rng);
            }
        }
        t = info.t0 + (double)j * dt;

        const int64_t t_in = now_ns();
        enum socflow_status st = socflow_controller_control(ctl, t, z, d, u, m);
        const int64_t t_out = now_ns();
        check(st, "socflow_controller_control");
        latency[k] = t_out - t_in;

        for (size_t i = 0; i < d; i++) {
            double drive = i < driven ? u[i] : 0.0;
            z[i] += drive * dt + noise * normal(&rng);
        }

        if (sleep_to_deadlines) {
            late[k] = t_in - next;
            const int64_t done = now_ns();
            next += period_ns;
            if (done > next) {
                missed++;
                /* Skip to the next period that is still ahead. */
                next += ((done - next) / period_ns + 1) * period_ns;
            }
        }
    }
    const double elapsed = (double)(now_ns() - start) / 1e9;

    qsort(latency, n, sizeof *latency, compare_i64);
    printf("latency_us p50=%.3f p99=%.3f p99.9=%.3f max=%.3f\n", percentile_us(latency, n, 50.0),
           percentile_us(latency, n, 99.0), percentile_us(latency, n, 99.9),
           percentile_us(latency, n, 100.0));
    if (sleep_to_deadlines) {
        qsort(late, n, sizeof *late, compare_i64);
        printf("wakeup_late_us p50=%.3f p99=%.3f max=%.3f\n", percentile_us(late, n, 50.0),
               percentile_us(late, n, 99.0), percentile_us(late, n, 100.0));
        printf("missed_deadlines=%zu of %zu\n", missed, n);
    }
    printf("elapsed_s=%.3f calls_per_s=%.0f\n", elapsed, (double)n / elapsed);
    printf("final t=%.17g x=", t);
    for (size_t i = 0; i < d; i++) {
        printf("%s%.17g", i ? "," : "", z[i]);
    }
    printf(" u=");
    for (size_t i = 0; i < m; i++) {
        printf("%s%.17g", i ? "," : "", u[i]);
    }
    printf("\n");

    check(socflow_controller_destroy(ctl), "socflow_controller_destroy");
    free(z);
    free(u);
    free(latency);
    free(late);
    return 0;
}
