/*
 * sample: draw samples of a socflow flow model (potential or velocity) or score
 * model (VP-SDE diffusion) into a caller-owned buffer and write them as a NumPy .npy
 * file (float64, shape (n, d)) that numpy.load reads.
 *
 *   sample MODEL OUT.npy [--n N] [--solver euler|heun|rk4|dopri5|em|stochastic-heun]
 *          [--steps K] [--rtol R] [--atol A] [--seed S] [--threads T] [--chunk C]
 *          [--f32] [--log-density LOGP.npy]
 *
 * The ODE solvers (euler, heun, rk4, dopri5) integrate a flow model's field, or a
 * score model's probability-flow ODE; em (Euler-Maruyama) and stochastic-heun run a
 * score model's reverse SDE with --steps fixed steps (what `socflow sample` does on
 * a score model by default; e.g. --solver em --steps 500).
 *
 * Samples first .. first + n are keyed by (seed, index): the same seed gives the
 * same samples for any thread count and any --chunk (the buffer is filled by calls
 * of C samples each at consecutive first_sample offsets); so are the Brownian
 * increments of the reverse SDE (by seed, index and step). --log-density also
 * computes each sample's log-density (exact trace; ODE solvers only) and writes it
 * as shape (n,).
 *
 * Exit status: 0 on success, 1 on a socflow error (its status name and message are
 * printed), 2 on bad arguments, 3 on other failures (memory, I/O).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <socflow.h>

static void check(enum socflow_status st, const char *what) {
    if (st != SOCFLOW_OK) {
        fprintf(stderr, "sample: %s failed: %s: %s\n", what, socflow_status_name((int32_t)st),
                socflow_last_error());
        exit(1);
    }
}

static void usage(const char *msg) {
    if (msg != NULL) {
        fprintf(stderr, "sample: %s\n", msg);
    }
    fprintf(stderr,
            "usage: sample MODEL OUT.npy [--n N] [--solver NAME] [--steps K] [--rtol R]\n"
            "              [--atol A] [--seed S] [--threads T] [--chunk C] [--f32]\n"
            "              [--log-density LOGP.npy]\n"
            "  --n N            samples to draw (default 1000)\n"
            "  --solver NAME    euler, heun, rk4 or dopri5: an ODE solver (a flow's field, or\n"
            "                   a score model's probability-flow ODE); em or stochastic-heun:\n"
            "                   a score model's reverse SDE (default rk4)\n"
            "  --steps K        steps of a fixed-step solver, ODE or SDE (default 32)\n"
            "  --rtol, --atol   tolerances of dopri5 (default 1e-5)\n"
            "  --seed S         seed of the prior draws and SDE noise (default 0)\n"
            "  --threads T      worker threads (0, the default: the library's shared pool)\n"
            "  --chunk C        samples per call (default: all in one call)\n"
            "  --f32            compute in single precision (the file stays float64)\n"
            "  --log-density F  also write each sample's log-density to F (.npy, shape (n,));\n"
            "                   ODE solvers only\n");
    exit(2);
}

static unsigned long long parse_count(const char *s, const char *opt, unsigned long long min) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min) {
        fprintf(stderr, "sample: %s needs an integer >= %llu, got '%s'\n", opt, min, s);
        usage(NULL);
    }
    return v;
}

static double parse_positive(const char *s, const char *opt) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || !(v > 0.0)) {
        fprintf(stderr, "sample: %s needs a positive number, got '%s'\n", opt, s);
        usage(NULL);
    }
    return v;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/*
 * Writes `rows` × `cols` doubles (row-major) as a version 1.0 .npy file: the magic
 * "\x93NUMPY", the version, the header length (little-endian uint16), a Python dict
 * literal padded with spaces to a multiple of 64 bytes and ending in '\n', then the
 * data as little-endian float64. cols == 0 writes a 1-D array of shape (rows,).
 * Returns 0, or -1 with errno set.
 */
static int write_npy(const char *path, const double *data, size_t rows, size_t cols) {
    char dict[160];
    int len;
    if (cols == 0) {
        len = snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%zu,), }",
                       rows);
    } else {
        len = snprintf(dict, sizeof dict,
                       "{'descr': '<f8', 'fortran_order': False, 'shape': (%zu, %zu), }", rows, cols);
    }
    if (len < 0 || (size_t)len >= sizeof dict) {
        errno = EOVERFLOW;
        return -1;
    }
    /* 10 bytes of preamble + dict + padding + '\n' = a multiple of 64. */
    size_t total = ((10 + (size_t)len + 1 + 63) / 64) * 64;
    size_t header_len = total - 10;
    unsigned char header[256];
    memcpy(header, "\x93NUMPY\x01\x00", 8);
    header[8] = (unsigned char)(header_len & 0xff);
    header[9] = (unsigned char)(header_len >> 8);
    memcpy(header + 10, dict, (size_t)len);
    memset(header + 10 + len, ' ', header_len - (size_t)len - 1);
    header[total - 1] = '\n';

    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return -1;
    }
    int ok = fwrite(header, 1, total, f) == total;
    size_t count = cols == 0 ? rows : rows * cols;
    if (ok && little_endian()) {
        ok = fwrite(data, sizeof *data, count, f) == count;
    } else {
        for (size_t i = 0; ok && i < count; i++) {
            unsigned char b[8];
            uint64_t bits;
            memcpy(&bits, &data[i], 8);
            for (int k = 0; k < 8; k++) {
                b[k] = (unsigned char)(bits >> (8 * k));
            }
            ok = fwrite(b, 1, 8, f) == 8;
        }
    }
    if (fclose(f) != 0) {
        ok = 0;
    }
    return ok ? 0 : -1;
}

int main(int argc, char **argv) {
    const char *model_path = NULL;
    const char *out_path = NULL;
    const char *logp_path = NULL;
    size_t n = 1000;
    size_t chunk = 0;

    struct socflow_sampler_options opts;
    check(socflow_sampler_options_default(&opts), "socflow_sampler_options_default");

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--f32") == 0) {
            opts.precision = SOCFLOW_PRECISION_F32;
        } else if (strcmp(a, "--n") == 0 && has_value) {
            n = (size_t)parse_count(argv[++i], a, 1);
        } else if (strcmp(a, "--solver") == 0 && has_value) {
            const char *s = argv[++i];
            if (strcmp(s, "euler") == 0) {
                opts.solver = SOCFLOW_SOLVER_EULER;
            } else if (strcmp(s, "heun") == 0) {
                opts.solver = SOCFLOW_SOLVER_HEUN;
            } else if (strcmp(s, "rk4") == 0) {
                opts.solver = SOCFLOW_SOLVER_RK4;
            } else if (strcmp(s, "dopri5") == 0) {
                opts.solver = SOCFLOW_SOLVER_DOPRI5;
            } else if (strcmp(s, "em") == 0) {
                opts.solver = SOCFLOW_SOLVER_EULER_MARUYAMA;
            } else if (strcmp(s, "stochastic-heun") == 0) {
                opts.solver = SOCFLOW_SOLVER_STOCHASTIC_HEUN;
            } else {
                fprintf(stderr, "sample: unknown solver '%s'\n", s);
                usage(NULL);
            }
        } else if (strcmp(a, "--steps") == 0 && has_value) {
            opts.steps = (size_t)parse_count(argv[++i], a, 1);
        } else if (strcmp(a, "--rtol") == 0 && has_value) {
            opts.rtol = parse_positive(argv[++i], a);
        } else if (strcmp(a, "--atol") == 0 && has_value) {
            opts.atol = parse_positive(argv[++i], a);
        } else if (strcmp(a, "--seed") == 0 && has_value) {
            opts.seed = (uint64_t)parse_count(argv[++i], a, 0);
        } else if (strcmp(a, "--threads") == 0 && has_value) {
            opts.threads = (size_t)parse_count(argv[++i], a, 0);
        } else if (strcmp(a, "--chunk") == 0 && has_value) {
            chunk = (size_t)parse_count(argv[++i], a, 1);
        } else if (strcmp(a, "--log-density") == 0 && has_value) {
            logp_path = argv[++i];
            opts.log_density = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(NULL);
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "sample: unknown option or missing value: %s\n", a);
            usage(NULL);
        } else if (model_path == NULL) {
            model_path = a;
        } else if (out_path == NULL) {
            out_path = a;
        } else {
            usage("too many arguments");
        }
    }
    if (model_path == NULL || out_path == NULL) {
        usage("a model path and an output path are needed");
    }
    if (chunk == 0 || chunk > n) {
        chunk = n;
    }

    struct socflow_model model = {0};
    check(socflow_model_load(model_path, &model), "socflow_model_load");
    /* The sampler knows how to draw from each kind of model; the kind is printed. */
    struct socflow_model_info info;
    check(socflow_model_get_info(model, &info), "socflow_model_get_info");
    static const char *const kind_names[] = {"potential", "velocity", "score"};
    const char *kind = info.kind < 3 ? kind_names[info.kind] : "?";
    struct socflow_sampler sampler = {0};
    check(socflow_sampler_create(model, &opts, &sampler), "socflow_sampler_create");
    check(socflow_model_destroy(model), "socflow_model_destroy");
    size_t d = 0;
    check(socflow_sampler_dim(sampler, &d), "socflow_sampler_dim");
    if (n > SIZE_MAX / sizeof(double) / d) {
        fprintf(stderr, "sample: %zu samples of dimension %zu do not fit in memory\n", n, d);
        return 3;
    }

    /* The caller owns the buffers: the library only writes into them. */
    double *x = malloc(n * d * sizeof *x);
    double *logp = opts.log_density ? malloc(n * sizeof *logp) : NULL;
    if (x == NULL || (opts.log_density && logp == NULL)) {
        fprintf(stderr, "sample: out of memory for %zu samples of dimension %zu\n", n, d);
        return 3;
    }

    double t_start = seconds();
    for (size_t first = 0; first < n; first += chunk) {
        size_t rows = n - first < chunk ? n - first : chunk;
        check(socflow_sampler_sample(sampler, (uint64_t)first, x + first * d, rows * d,
                                     logp ? logp + first : NULL, logp ? rows : 0),
              "socflow_sampler_sample");
    }
    double elapsed = seconds() - t_start;
    check(socflow_sampler_destroy(sampler), "socflow_sampler_destroy");

    static const char *const solver_names[] = {"euler", "heun", "rk4",
                                               "dopri5", "em", "stochastic-heun"};
    printf("sampled n=%zu d=%zu kind=%s solver=%s steps=%zu seed=%" PRIu64
           " precision=%s chunk=%zu\n",
           n, d, kind, opts.solver < 6 ? solver_names[opts.solver] : "?", opts.steps, opts.seed,
           opts.precision == SOCFLOW_PRECISION_F32 ? "f32" : "f64", chunk);
    printf("elapsed_s=%.6f samples_per_s=%.1f\n", elapsed, (double)n / elapsed);

    int rc = 0;
    if (write_npy(out_path, x, n, d) != 0) {
        fprintf(stderr, "sample: cannot write %s: %s\n", out_path, strerror(errno));
        rc = 3;
    } else {
        printf("wrote %s (float64, shape (%zu, %zu))\n", out_path, n, d);
    }
    if (rc == 0 && logp != NULL) {
        if (write_npy(logp_path, logp, n, 0) != 0) {
            fprintf(stderr, "sample: cannot write %s: %s\n", logp_path, strerror(errno));
            rc = 3;
        } else {
            double mean = 0.0;
            for (size_t i = 0; i < n; i++) {
                mean += logp[i];
            }
            printf("wrote %s (float64, shape (%zu,)); mean log-density %.6f\n", logp_path, n,
                   mean / (double)n);
        }
    }
    free(x);
    free(logp);
    return rc;
}
