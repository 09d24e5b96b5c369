/*
 * The socflow C ABI checked from C: every error path gives its status and a
 * message (and no crash), results equal the Rust API's, threads share models and
 * samplers safely.
 *
 * Usage: test_abi DIR [--quick]
 *
 * DIR is written by the Rust harness (ffi/tests/all/c_abi.rs): the model files
 * map.safetensors (OT-Flow, 4 states, a 2 x 4 control map), plain.safetensors
 * (OT-Flow, 3 states, no control map, a data normalization), velocity.safetensors
 * and score.safetensors (MLP fields, 2 states; the score model is a VP-SDE diffusion
 * with the default schedule, sampled by its probability-flow ODE and its reverse
 * SDE), and expected.txt: the inputs and the values the Rust API computes for them,
 * one array a line, "name count v1 ... v_count".
 *
 * --quick leaves out the sampler results and the shared sampler, and makes
 * fewer calls in the other threaded groups (for valgrind, which is slow).
 *
 * Prints one line per group of checks; exits 1 after any failure, naming the
 * failing check's file:line, the status and socflow_last_error().
 *
 * C99 with POSIX threads; the types are spelled with their tags (struct
 * socflow_model, enum socflow_status), which the header always declares.
 */
#define _POSIX_C_SOURCE 200809L

#include <socflow.h>

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* Checks and reporting                                                      */

static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;
static long n_checks = 0;
static long n_failures = 0;

static void count_check(void) {
    pthread_mutex_lock(&report_lock);
    n_checks++;
    pthread_mutex_unlock(&report_lock);
}

static void fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&report_lock);
    n_failures++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    pthread_mutex_unlock(&report_lock);
}

#define FAIL(...) fail_at(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(cond, ...)              \
    do {                              \
        count_check();                \
        if (!(cond)) FAIL(__VA_ARGS__); \
    } while (0)

static const char *status_name(enum socflow_status s) { return socflow_status_name((int32_t)s); }

static const char *last_error(void) {
    const char *e = socflow_last_error();
    return e ? e : "(NULL)";
}

/* A failure that every later failure must overwrite: loading a path that cannot
 * exist leaves a last error naming it, so a checked failure that does not set its
 * own message is caught. */
#define SENTINEL "/nonexistent-socflow-sentinel"

static void set_sentinel(void) {
    struct socflow_model m;
    enum socflow_status s = socflow_model_load(SENTINEL "/model.safetensors", &m);
    if (s != SOCFLOW_ERROR_IO || strstr(last_error(), "socflow-sentinel") == NULL) {
        FAIL("sentinel load gave %s, last error \"%s\"", status_name(s), last_error());
    }
}

static int check_ok_at(const char *file, int line, const char *what, enum socflow_status s) {
    count_check();
    if (s != SOCFLOW_OK) {
        fail_at(file, line, "%s gave %s (expected SOCFLOW_OK): %s", what, status_name(s),
                last_error());
        return 0;
    }
    return 1;
}

static int check_err_at(const char *file, int line, const char *what, enum socflow_status want,
                        enum socflow_status got) {
    const char *e = last_error();
    count_check();
    if (got != want) {
        fail_at(file, line, "%s gave %s, expected %s (last error: %s)", what, status_name(got),
                status_name(want), e);
        return 0;
    }
    if (e[0] == '\0') {
        fail_at(file, line, "%s gave %s with an empty last error", what, status_name(got));
        return 0;
    }
    if (strstr(e, "socflow-sentinel") != NULL) {
        fail_at(file, line, "%s gave %s but did not set the last error (still \"%s\")", what,
                status_name(got), e);
        return 0;
    }
    return 1;
}

/* CHECK_OK(call): the call succeeds. CHECK_ERR(status, call): the call fails with
 * exactly that status and sets a non-empty last error of its own. */
#define CHECK_OK(call) check_ok_at(__FILE__, __LINE__, #call, (call))
#define CHECK_ERR(want, call)                                        \
    do {                                                             \
        set_sentinel();                                              \
        check_err_at(__FILE__, __LINE__, #call, (want), (call));     \
    } while (0)

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* Runs a group of checks and prints its line. */
static void group(const char *name, void (*body)(void)) {
    long checks0, failures0;
    double start = now_ms();
    pthread_mutex_lock(&report_lock);
    checks0 = n_checks;
    failures0 = n_failures;
    pthread_mutex_unlock(&report_lock);
    body();
    pthread_mutex_lock(&report_lock);
    printf("%-4s %-28s %6ld checks %8.1f ms\n", n_failures == failures0 ? "ok" : "FAIL", name,
           n_checks - checks0, now_ms() - start);
    fflush(stdout);
    pthread_mutex_unlock(&report_lock);
}

/* Doubles equal to a relative tolerance (0: bit for bit, up to the sign of zero). */
static int close_rel(double got, double want, double rtol) {
    if (got == want) return 1;
    if (!isfinite(got) || !isfinite(want)) return 0;
    return fabs(got - want) <= rtol * fmax(fabs(got), fabs(want));
}

/* |got - want| <= tol (1 + |want|): single precision against double results. */
static int close_f32(double got, double want, double tol) {
    return isfinite(got) && fabs(got - want) <= tol * (1.0 + fabs(want));
}

#define RTOL64 1e-12
#define TOL32 1e-4

static int check_array_at(const char *file, int line, const char *what, const double *got,
                          const double *want, size_t n, int f32) {
    size_t i;
    count_check();
    for (i = 0; i < n; i++) {
        int ok = f32 ? close_f32(got[i], want[i], TOL32) : close_rel(got[i], want[i], RTOL64);
        if (!ok) {
            fail_at(file, line, "%s[%zu] = %.17g, expected %.17g (%s, %zu values)", what, i,
                    got[i], want[i], f32 ? "f32 tolerance" : "f64 tolerance", n);
            return 0;
        }
    }
    return 1;
}

/* CHECK_F64: within 1e-12 relative; CHECK_F32: within 1e-4 (1 + |want|). */
#define CHECK_F64(what, got, want, n) check_array_at(__FILE__, __LINE__, what, got, want, n, 0)
#define CHECK_F32(what, got, want, n) check_array_at(__FILE__, __LINE__, what, got, want, n, 1)

/* ------------------------------------------------------------------------ */
/* Inputs                                                                    */

static const char *dir;

/* --quick (for runs under valgrind): the slow sampler groups are left out and the
 * threaded groups do fewer rounds. */
static int quick = 0;

struct array {
    char name[64];
    size_t n;
    double *v;
};

static struct array *arrays;
static size_t n_arrays;

static void die(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "test_abi: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(2);
}

static char *path_in_dir(const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (!p) die("out of memory");
    snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static void read_expected(void) {
    char *path = path_in_dir("expected.txt");
    FILE *f = fopen(path, "r");
    size_t cap = 0;
    if (!f) die("cannot open %s", path);
    for (;;) {
        char name[64];
        size_t n, i;
        struct array *a;
        int r = fscanf(f, "%63s %zu", name, &n);
        if (r == EOF) break;
        if (r != 2) die("%s: malformed line after %zu arrays", path, n_arrays);
        if (n_arrays == cap) {
            cap = cap ? 2 * cap : 64;
            arrays = realloc(arrays, cap * sizeof *arrays);
            if (!arrays) die("out of memory");
        }
        a = &arrays[n_arrays++];
        memcpy(a->name, name, sizeof name);
        a->n = n;
        a->v = malloc((n ? n : 1) * sizeof(double));
        if (!a->v) die("out of memory");
        for (i = 0; i < n; i++) {
            if (fscanf(f, "%lf", &a->v[i]) != 1) die("%s: array %s is short", path, name);
        }
    }
    fclose(f);
    free(path);
}

/* The array `name`, which must hold `n` values (any number when n is 0; the
 * length is stored in *len when len is not NULL). */
static const double *expect(const char *name, size_t n, size_t *len) {
    size_t i;
    for (i = 0; i < n_arrays; i++) {
        if (strcmp(arrays[i].name, name) == 0) {
            if (n && arrays[i].n != n) {
                die("expected.txt: %s has %zu values, the test needs %zu", name, arrays[i].n, n);
            }
            if (len) *len = arrays[i].n;
            return arrays[i].v;
        }
    }
    die("expected.txt has no array %s", name);
    return NULL;
}

static double expect1(const char *name) { return expect(name, 1, NULL)[0]; }

static unsigned char *read_bytes(const char *file, size_t *len) {
    char *path = path_in_dir(file);
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    if (!f) die("cannot open %s", path);
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        die("cannot size %s", path);
    }
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die("cannot read %s", path);
    fclose(f);
    free(path);
    *len = (size_t)n;
    return buf;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) die("out of memory");
    return p;
}

static void fill(double *p, size_t n, double v) {
    size_t i;
    for (i = 0; i < n; i++) p[i] = v;
}

static int all_equal(const double *p, size_t n, double v) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (p[i] != v) return 0;
    }
    return 1;
}

/* Loads a model of DIR; the test cannot go on without it. */
static struct socflow_model load(const char *file) {
    struct socflow_model m = {0};
    char *path = path_in_dir(file);
    enum socflow_status s = socflow_model_load(path, &m);
    if (s != SOCFLOW_OK) die("cannot load %s: %s: %s", path, status_name(s), last_error());
    free(path);
    return m;
}

static struct socflow_controller make_controller(struct socflow_model m, uint32_t precision) {
    struct socflow_controller c = {0};
    enum socflow_status s = socflow_controller_create(m, precision, &c);
    if (s != SOCFLOW_OK) die("cannot create a controller: %s: %s", status_name(s), last_error());
    return c;
}

static struct socflow_sampler make_sampler(struct socflow_model m,
                                           const struct socflow_sampler_options *o) {
    struct socflow_sampler smp = {0};
    enum socflow_status s = socflow_sampler_create(m, o, &smp);
    if (s != SOCFLOW_OK) die("cannot create a sampler: %s: %s", status_name(s), last_error());
    return smp;
}

/* Sizes of the models (checked against expected.txt's info arrays). */
#define MAP_D 4
#define MAP_U 2
#define PLAIN_D 3
#define MLP_D 2

static const uint64_t JUNK_ID = 0x0badc0de0badc0deULL;

/* ------------------------------------------------------------------------ */
/* Version, status names, last error                                         */

static void test_version(void) {
    char want[64];
    uint32_t major = 99, minor = 99, patch = 99;
    const double *v = expect("version", 3, NULL);
    snprintf(want, sizeof want, "%d.%d.%d", SOCFLOW_VERSION_MAJOR, SOCFLOW_VERSION_MINOR,
             SOCFLOW_VERSION_PATCH);
    CHECK(socflow_version() != NULL && strcmp(socflow_version(), want) == 0,
          "socflow_version() = \"%s\", the header says %s", socflow_version(), want);
    CHECK_OK(socflow_version_numbers(&major, &minor, &patch));
    CHECK(major == SOCFLOW_VERSION_MAJOR && minor == SOCFLOW_VERSION_MINOR &&
              patch == SOCFLOW_VERSION_PATCH,
          "socflow_version_numbers gave %u.%u.%u, the header says %s", major, minor, patch, want);
    CHECK(major == (uint32_t)v[0] && minor == (uint32_t)v[1] && patch == (uint32_t)v[2],
          "library %u.%u.%u, Cargo.toml %g.%g.%g", major, minor, patch, v[0], v[1], v[2]);
    /* Any pointer may be NULL. */
    major = 99;
    CHECK_OK(socflow_version_numbers(&major, NULL, NULL));
    CHECK(major == SOCFLOW_VERSION_MAJOR, "major alone: %u", major);
    CHECK_OK(socflow_version_numbers(NULL, NULL, NULL));
}

static void test_status_names(void) {
    static const char *names[] = {
        "SOCFLOW_OK",
        "SOCFLOW_ERROR_NULL_POINTER",
        "SOCFLOW_ERROR_INVALID_HANDLE",
        "SOCFLOW_ERROR_BUSY",
        "SOCFLOW_ERROR_LENGTH",
        "SOCFLOW_ERROR_NON_FINITE",
        "SOCFLOW_ERROR_INVALID_ARGUMENT",
        "SOCFLOW_ERROR_IO",
        "SOCFLOW_ERROR_FORMAT",
        "SOCFLOW_ERROR_UNSUPPORTED",
        "SOCFLOW_ERROR_INTEGRATION",
        "SOCFLOW_ERROR_CALLBACK",
        "SOCFLOW_ERROR_INTERNAL",
    };
    static const int codes[] = {
        SOCFLOW_OK,
        SOCFLOW_ERROR_NULL_POINTER,
        SOCFLOW_ERROR_INVALID_HANDLE,
        SOCFLOW_ERROR_BUSY,
        SOCFLOW_ERROR_LENGTH,
        SOCFLOW_ERROR_NON_FINITE,
        SOCFLOW_ERROR_INVALID_ARGUMENT,
        SOCFLOW_ERROR_IO,
        SOCFLOW_ERROR_FORMAT,
        SOCFLOW_ERROR_UNSUPPORTED,
        SOCFLOW_ERROR_INTEGRATION,
        SOCFLOW_ERROR_CALLBACK,
        SOCFLOW_ERROR_INTERNAL,
    };
    static const int unknown[] = {-1, 13, 1000, INT32_MIN, INT32_MAX};
    size_t i;
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK(codes[i] == (int)i, "%s has code %d, expected %zu", names[i], codes[i], i);
        CHECK(strcmp(socflow_status_name(codes[i]), names[i]) == 0,
              "socflow_status_name(%d) = %s, expected %s", codes[i],
              socflow_status_name(codes[i]), names[i]);
    }
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        CHECK(strcmp(socflow_status_name(unknown[i]), "SOCFLOW_UNKNOWN_STATUS") == 0,
              "socflow_status_name(%d) = %s", unknown[i], socflow_status_name(unknown[i]));
    }
}

/* ------------------------------------------------------------------------ */
/* Models                                                                    */

static void check_info(const char *name, struct socflow_model m) {
    char key[64];
    const double *want;
    struct socflow_model_info info;
    memset(&info, 0xff, sizeof info);
    snprintf(key, sizeof key, "info.%s", name);
    want = expect(key, 6, NULL);
    if (!CHECK_OK(socflow_model_get_info(m, &info))) return;
    CHECK(info.state_dim == (size_t)want[0] && info.control_dim == (size_t)want[1] &&
              info.kind == (uint32_t)want[2] && info.t0 == want[3] && info.t1 == want[4] &&
              info.parameter_count == (size_t)want[5],
          "%s: info {state_dim %zu, control_dim %zu, kind %u, t0 %g, t1 %g, parameters %zu}, "
          "expected {%g, %g, %g, %g, %g, %g}",
          name, info.state_dim, info.control_dim, info.kind, info.t0, info.t1,
          info.parameter_count, want[0], want[1], want[2], want[3], want[4], want[5]);
}

static void test_models(void) {
    static const char *names[] = {"map", "plain", "velocity", "score"};
    static const uint32_t kinds[] = {SOCFLOW_MODEL_POTENTIAL, SOCFLOW_MODEL_POTENTIAL,
                                     SOCFLOW_MODEL_VELOCITY, SOCFLOW_MODEL_SCORE};
    size_t i;
    for (i = 0; i < 4; i++) {
        char file[64];
        struct socflow_model from_path, from_buffer;
        struct socflow_model_info a, b;
        size_t len;
        unsigned char *bytes;
        snprintf(file, sizeof file, "%s.safetensors", names[i]);
        from_path = load(file);
        CHECK(from_path.id != 0, "%s: a loaded model has a non-null handle", names[i]);
        check_info(names[i], from_path);
        bytes = read_bytes(file, &len);
        from_buffer.id = JUNK_ID;
        CHECK_OK(socflow_model_load_buffer(bytes, len, &from_buffer));
        /* The library copies what it needs: the buffer may go at once. */
        memset(bytes, 0, len);
        free(bytes);
        CHECK(from_buffer.id != 0 && from_buffer.id != from_path.id,
              "%s: the buffer's model has its own handle", names[i]);
        check_info(names[i], from_buffer);
        if (CHECK_OK(socflow_model_get_info(from_path, &a)) &&
            CHECK_OK(socflow_model_get_info(from_buffer, &b))) {
            CHECK(a.kind == kinds[i], "%s: kind %u, expected %u", names[i], a.kind, kinds[i]);
            CHECK(a.state_dim == b.state_dim && a.control_dim == b.control_dim &&
                      a.kind == b.kind && a.t0 == b.t0 && a.t1 == b.t1 &&
                      a.parameter_count == b.parameter_count,
                  "%s: the info from the path and from the buffer differ", names[i]);
        }
        CHECK_OK(socflow_model_destroy(from_path));
        CHECK_OK(socflow_model_destroy(from_buffer));
    }
}

static void test_model_errors(void) {
    struct socflow_model m;
    struct socflow_model_info info;
    size_t len, i;
    unsigned char *bytes = read_bytes("map.safetensors", &len);
    unsigned char garbage[1024];
    char *text = path_in_dir("expected.txt");
    char *missing = path_in_dir("no-such-model.safetensors");
    /* NULL path and out. */
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_model_load(NULL, &m));
    CHECK(m.id == 0, "a failed load leaves the null handle, found %#llx", (unsigned long long)m.id);
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_model_load(missing, NULL));
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_model_load_buffer(NULL, len, &m));
    CHECK(m.id == 0, "a failed load leaves the null handle");
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_model_load_buffer(NULL, 0, &m));
    CHECK(m.id == 0, "a failed load leaves the null handle");
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_model_load_buffer(bytes, len, NULL));
    /* Files that are not there, or not models. */
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_IO, socflow_model_load(missing, &m));
    CHECK(m.id == 0, "a failed load leaves the null handle");
    CHECK(strstr(last_error(), "no-such-model.safetensors") != NULL,
          "the IO error names the file: %s", last_error());
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_IO, socflow_model_load(dir, &m)); /* a directory */
    CHECK(m.id == 0, "a failed load leaves the null handle");
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_FORMAT, socflow_model_load(text, &m));
    CHECK(m.id == 0, "a failed load leaves the null handle");
    m.id = JUNK_ID;
    CHECK_ERR(SOCFLOW_ERROR_IO, socflow_model_load("", &m));
    CHECK(m.id == 0, "a failed load leaves the null handle");
    /* Malformed buffers: truncated at several places, and garbage. */
    {
        size_t cuts[] = {0, 1, 7, 8, 9, 64, len / 2, len - 8, len - 1};
        for (i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            m.id = JUNK_ID;
            CHECK_ERR(SOCFLOW_ERROR_FORMAT, socflow_model_load_buffer(bytes, cuts[i], &m));
            CHECK(m.id == 0, "a failed load of %zu bytes leaves the null handle", cuts[i]);
        }
    }
    {
        uint64_t x = 0x9e3779b97f4a7c15ULL;
        for (i = 0; i < sizeof garbage; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            garbage[i] = (unsigned char)(x >> 32);
        }
        m.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_FORMAT, socflow_model_load_buffer(garbage, sizeof garbage, &m));
        CHECK(m.id == 0, "a failed load leaves the null handle");
        /* A header length that claims far more than the buffer holds. */
        memset(garbage, 0xff, 8);
        m.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_FORMAT, socflow_model_load_buffer(garbage, sizeof garbage, &m));
        CHECK(m.id == 0, "a failed load leaves the null handle");
        /* The real header with its JSON damaged. */
        memcpy(garbage, bytes, sizeof garbage < len ? sizeof garbage : len);
        garbage[8] = '!';
        m.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_FORMAT,
                  socflow_model_load_buffer(garbage, sizeof garbage < len ? sizeof garbage : len, &m));
        CHECK(m.id == 0, "a failed load leaves the null handle");
    }
    /* The intact buffer still loads; info needs its out pointer. */
    m = (struct socflow_model){0};
    if (CHECK_OK(socflow_model_load_buffer(bytes, len, &m))) {
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_model_get_info(m, NULL));
        CHECK_OK(socflow_model_get_info(m, &info));
        CHECK_OK(socflow_model_destroy(m));
    }
    free(bytes);
    free(text);
    free(missing);
}

/* ------------------------------------------------------------------------ */
/* Handles: null, closed, forged and wrong-kind, for every function          */

enum kind { MODEL = 1, CONTROLLER = 2, SAMPLER = 3 };

/* Calls every function that takes a handle of `kind` with `id` and checks that
 * each gives SOCFLOW_ERROR_INVALID_HANDLE, that creates leave the null handle, and
 * that no output is written. */
static void check_bad_handle(enum kind kind, uint64_t id, const char *what) {
    double x[MAP_D] = {0.1, 0.2, 0.3, 0.4};
    double u[MAP_U] = {-7.0, -7.0};
    double value = -7.0;
    size_t d1 = 77, d2 = 77;
    double xs[2 * MAP_D] = {0};
    double us[2 * MAP_U] = {-7.0, -7.0, -7.0, -7.0};
    double finals[MAP_D], costs[1];
    double samples[2 * MAP_D];
    struct socflow_simulate_options so;
    memset(&so, 0, sizeof so);
    so.x0 = x;
    so.x0_len = MAP_D;
    so.t0 = 0.0;
    so.t1 = 1.0;
    so.steps = 2;
    so.paths = 1;
    fill(finals, MAP_D, -7.0);
    fill(samples, 2 * MAP_D, -7.0);
    costs[0] = -7.0;
    if (kind == MODEL) {
        struct socflow_model m = {id};
        struct socflow_controller c;
        struct socflow_sampler s;
        struct socflow_model_info info;
        memset(&info, 0x5a, sizeof info);
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_model_get_info(m, &info));
        c.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_create(m, SOCFLOW_PRECISION_F64, &c));
        CHECK(c.id == 0, "%s: controller_create left %#llx in out", what, (unsigned long long)c.id);
        c.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_create(m, SOCFLOW_PRECISION_F32, &c));
        CHECK(c.id == 0, "%s: controller_create (f32) left a handle in out", what);
        s.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_sampler_create(m, NULL, &s));
        CHECK(s.id == 0, "%s: sampler_create left %#llx in out", what, (unsigned long long)s.id);
        if (id != 0) {
            CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_model_destroy(m));
        }
    } else if (kind == CONTROLLER) {
        struct socflow_controller c = {id};
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_dims(c, &d1, &d2));
        CHECK(d1 == 77 && d2 == 77, "%s: dims wrote through a bad handle", what);
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_control(c, 0.5, x, MAP_D, u, MAP_U));
        CHECK(all_equal(u, MAP_U, -7.0), "%s: control wrote u through a bad handle", what);
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_value(c, 0.5, x, MAP_D, &value));
        CHECK(value == -7.0, "%s: value wrote through a bad handle", what);
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE,
                  socflow_controller_control_batch(c, 0.5, xs, 2 * MAP_D, us, 2 * MAP_U));
        CHECK(all_equal(us, 2 * MAP_U, -7.0), "%s: control_batch wrote through a bad handle", what);
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE,
                  socflow_controller_simulate(c, &so, NULL, finals, MAP_D, costs, 1, NULL, 0));
        CHECK(all_equal(finals, MAP_D, -7.0) && costs[0] == -7.0,
              "%s: simulate wrote through a bad handle", what);
        if (id != 0) {
            CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_destroy(c));
        }
    } else {
        struct socflow_sampler s = {id};
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_sampler_dim(s, &d1));
        CHECK(d1 == 77, "%s: sampler_dim wrote through a bad handle", what);
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE,
                  socflow_sampler_sample(s, 0, samples, 2 * MAP_D, NULL, 0));
        CHECK(all_equal(samples, 2 * MAP_D, -7.0), "%s: sample wrote through a bad handle", what);
        if (id != 0) {
            CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_sampler_destroy(s));
        }
    }
}

static void check_bad_ids(enum kind kind, uint64_t live_id, uint64_t closed_id,
                          const uint64_t *other_kinds, size_t n_other) {
    const uint64_t kind_bits = (uint64_t)kind << 24;
    const uint64_t forged[] = {
        JUNK_ID,
        UINT64_MAX,
        1,                                    /* kind byte 0 */
        kind_bits,                            /* slot 0 */
        ((uint64_t)1 << 32) | kind_bits,      /* slot 0, generation 1 */
        ((uint64_t)7 << 32) | kind_bits | 0xfffffe, /* a slot never allocated */
        live_id ^ ((uint64_t)1 << 32),        /* the live slot, another generation */
        live_id ^ ((uint64_t)0xffff << 40),   /* ditto */
        live_id & 0xffffffffULL,              /* generation 0 */
        live_id | ((uint64_t)1 << 31),        /* a stray high bit in the slot field */
    };
    size_t i;
    char what[96];
    check_bad_handle(kind, 0, "the null handle");
    check_bad_handle(kind, closed_id, "a closed handle");
    for (i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        snprintf(what, sizeof what, "forged id %#llx", (unsigned long long)forged[i]);
        check_bad_handle(kind, forged[i], what);
    }
    for (i = 0; i < n_other; i++) {
        snprintf(what, sizeof what, "a wrong-kind id %#llx", (unsigned long long)other_kinds[i]);
        check_bad_handle(kind, other_kinds[i], what);
    }
}

static void test_handles(void) {
    struct socflow_model model = load("map.safetensors");
    struct socflow_model closed_model = load("map.safetensors");
    struct socflow_controller ctl = make_controller(model, SOCFLOW_PRECISION_F64);
    struct socflow_controller closed_ctl = make_controller(model, SOCFLOW_PRECISION_F64);
    /* Two Euler steps: these samplers only need to exist (fast under valgrind). */
    const struct socflow_sampler_options few_steps = {
        .solver = SOCFLOW_SOLVER_EULER, .steps = 2, .rtol = 1e-5, .atol = 1e-5, .seed = 0,
        .precision = SOCFLOW_PRECISION_F64, .log_density = 0, .threads = 0};
    struct socflow_sampler smp = make_sampler(model, &few_steps);
    struct socflow_sampler closed_smp = make_sampler(model, &few_steps);
    uint64_t ids[3];
    double x[MAP_D] = {0.1, -0.2, 0.3, 0.05}, u[MAP_U];
    size_t sd = 0, cd = 0;

    CHECK(model.id != 0 && ctl.id != 0 && smp.id != 0, "live handles are not null");
    CHECK(model.id != ctl.id && ctl.id != smp.id && model.id != smp.id, "handles differ");
    CHECK_OK(socflow_model_destroy(closed_model));
    CHECK_OK(socflow_controller_destroy(closed_ctl));
    CHECK_OK(socflow_sampler_destroy(closed_smp));

    /* Double destroy is an error; destroying the null handle is not. */
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_model_destroy(closed_model));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_destroy(closed_ctl));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_sampler_destroy(closed_smp));
    CHECK_OK(socflow_model_destroy((struct socflow_model){0}));
    CHECK_OK(socflow_controller_destroy((struct socflow_controller){0}));
    CHECK_OK(socflow_sampler_destroy((struct socflow_sampler){0}));

    ids[0] = model.id;
    ids[1] = ctl.id;
    ids[2] = smp.id;
    {
        uint64_t others[] = {ids[1], ids[2], closed_ctl.id, closed_smp.id};
        check_bad_ids(MODEL, model.id, closed_model.id, others, 4);
    }
    {
        uint64_t others[] = {ids[0], ids[2], closed_model.id, closed_smp.id};
        check_bad_ids(CONTROLLER, ctl.id, closed_ctl.id, others, 4);
    }
    {
        uint64_t others[] = {ids[0], ids[1], closed_model.id, closed_ctl.id};
        check_bad_ids(SAMPLER, smp.id, closed_smp.id, others, 4);
    }

    /* A slot reused by a new object does not revive the old handle. */
    {
        struct socflow_controller again = make_controller(model, SOCFLOW_PRECISION_F64);
        CHECK(again.id != closed_ctl.id, "a new controller gets a new id");
        CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE,
                  socflow_controller_control(closed_ctl, 0.5, x, MAP_D, u, MAP_U));
        CHECK_OK(socflow_controller_control(again, 0.5, x, MAP_D, u, MAP_U));
        CHECK_OK(socflow_controller_destroy(again));
    }

    /* The live handles survived all of that. */
    CHECK_OK(socflow_controller_dims(ctl, &sd, &cd));
    CHECK(sd == MAP_D && cd == MAP_U, "dims %zu, %zu", sd, cd);
    CHECK_OK(socflow_sampler_dim(smp, &sd));
    CHECK(sd == MAP_D, "sampler dim %zu", sd);

    /* A model may go while its controllers and samplers live on. */
    CHECK_OK(socflow_model_destroy(model));
    CHECK_OK(socflow_controller_control(ctl, 0.5, x, MAP_D, u, MAP_U));
    {
        double samples[2 * MAP_D];
        CHECK_OK(socflow_sampler_sample(smp, 0, samples, 2 * MAP_D, NULL, 0));
    }
    CHECK_OK(socflow_controller_destroy(ctl));
    CHECK_OK(socflow_sampler_destroy(smp));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_destroy(ctl));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_sampler_destroy(smp));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_model_destroy(model));
}

/* ------------------------------------------------------------------------ */
/* Controllers                                                               */

/* control, value and control_batch against the Rust API's values. */
static void check_controls(struct socflow_controller c, int f32) {
    size_t k, n_states, n_batch;
    const double *t = expect("map.t", 0, &n_states);
    const double *xs = expect("map.x", n_states * MAP_D, NULL);
    const double *us = expect("map.u", n_states * MAP_U, NULL);
    const double *values = expect("map.value", n_states, NULL);
    const double *bx = expect("map.batch.x", 0, &n_batch);
    const double *bu;
    double bt = expect1("map.batch.t");
    double *got;
    size_t sd = 0, cd = 0;
    n_batch /= MAP_D;
    bu = expect("map.batch.u", n_batch * MAP_U, NULL);
    CHECK_OK(socflow_controller_dims(c, &sd, &cd));
    CHECK(sd == MAP_D && cd == MAP_U, "dims (%zu, %zu), expected (%d, %d)", sd, cd, MAP_D, MAP_U);
    for (k = 0; k < n_states; k++) {
        double u[MAP_U], v = 0;
        char what[64];
        snprintf(what, sizeof what, "%s control of state %zu", f32 ? "f32" : "f64", k);
        if (CHECK_OK(socflow_controller_control(c, t[k], xs + k * MAP_D, MAP_D, u, MAP_U))) {
            check_array_at(__FILE__, __LINE__, what, u, us + k * MAP_U, MAP_U, f32);
        }
        snprintf(what, sizeof what, "%s value of state %zu", f32 ? "f32" : "f64", k);
        if (CHECK_OK(socflow_controller_value(c, t[k], xs + k * MAP_D, MAP_D, &v))) {
            check_array_at(__FILE__, __LINE__, what, &v, values + k, 1, f32);
        }
    }
    got = dalloc(n_batch * MAP_U);
    if (CHECK_OK(socflow_controller_control_batch(c, bt, bx, n_batch * MAP_D, got, n_batch * MAP_U))) {
        check_array_at(__FILE__, __LINE__, f32 ? "f32 control_batch" : "f64 control_batch", got, bu,
                       n_batch * MAP_U, f32);
    }
    /* An empty batch is a batch. */
    CHECK_OK(socflow_controller_control_batch(c, bt, bx, 0, got, 0));
    free(got);
}

static void test_controller_results(void) {
    struct socflow_model model = load("map.safetensors");
    struct socflow_controller c64 = make_controller(model, SOCFLOW_PRECISION_F64);
    struct socflow_controller c32 = make_controller(model, SOCFLOW_PRECISION_F32);
    check_controls(c64, 0);
    check_controls(c32, 1);
    CHECK_OK(socflow_controller_destroy(c64));
    CHECK_OK(socflow_controller_destroy(c32));
    CHECK_OK(socflow_model_destroy(model));

    /* A model loaded from a buffer gives the same controls as from its path. */
    {
        size_t len;
        unsigned char *bytes = read_bytes("map.safetensors", &len);
        struct socflow_model m = {0};
        if (CHECK_OK(socflow_model_load_buffer(bytes, len, &m))) {
            struct socflow_controller c = make_controller(m, SOCFLOW_PRECISION_F64);
            free(bytes);
            bytes = NULL;
            check_controls(c, 0);
            CHECK_OK(socflow_controller_destroy(c));
            CHECK_OK(socflow_model_destroy(m));
        }
        free(bytes);
    }
}

static void test_controller_errors(void) {
    struct socflow_model model = load("map.safetensors");
    struct socflow_model velocity = load("velocity.safetensors");
    struct socflow_model score = load("score.safetensors");
    struct socflow_controller c = make_controller(model, SOCFLOW_PRECISION_F64);
    struct socflow_controller c32 = make_controller(model, SOCFLOW_PRECISION_F32);
    struct socflow_controller out;
    struct socflow_controller both[2];
    const double *xs = expect("map.x", 0, NULL);
    double x[MAP_D + 1], u[MAP_U + 1], value, buf[MAP_D + MAP_U];
    double bx[3 * MAP_D + 1], bu[3 * MAP_U + 1];
    size_t sd, i, j;
    both[0] = c;
    both[1] = c32;

    /* create: NULL out, unknown precision, models without a potential. */
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_create(model, SOCFLOW_PRECISION_F64, NULL));
    {
        uint32_t bad[] = {2, 3, 64, UINT32_MAX};
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            out.id = JUNK_ID;
            CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, socflow_controller_create(model, bad[i], &out));
            CHECK(out.id == 0, "a failed create leaves the null handle");
        }
    }
    for (i = 0; i < 2; i++) {
        uint32_t p = i ? SOCFLOW_PRECISION_F32 : SOCFLOW_PRECISION_F64;
        out.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_UNSUPPORTED, socflow_controller_create(velocity, p, &out));
        CHECK(out.id == 0, "a failed create leaves the null handle");
        out.id = JUNK_ID;
        CHECK_ERR(SOCFLOW_ERROR_UNSUPPORTED, socflow_controller_create(score, p, &out));
        CHECK(out.id == 0, "a failed create leaves the null handle");
    }

    /* dims: NULL outputs. */
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_dims(c, NULL, &sd));
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_dims(c, &sd, NULL));

    for (j = 0; j < 2; j++) {
        struct socflow_controller k = both[j];
        memcpy(x, xs, MAP_D * sizeof(double));
        x[MAP_D] = 0.0;
        /* control: NULL, lengths, non-finite t and x, overlap; u stays as it was. */
        fill(u, MAP_U + 1, -7.0);
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_control(k, 0.5, NULL, MAP_D, u, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_control(k, 0.5, x, MAP_D, NULL, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_control(k, 0.5, x, MAP_D - 1, u, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_control(k, 0.5, x, MAP_D + 1, u, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_control(k, 0.5, x, 0, u, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_control(k, 0.5, x, MAP_D, u, MAP_U - 1));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_control(k, 0.5, x, MAP_D, u, MAP_U + 1));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_control(k, 0.5, x, MAP_D, u, 0));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_control(k, NAN, x, MAP_D, u, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_control(k, INFINITY, x, MAP_D, u, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_control(k, -INFINITY, x, MAP_D, u, MAP_U));
        for (i = 0; i < MAP_D; i++) {
            double saved = x[i];
            x[i] = NAN;
            CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_control(k, 0.5, x, MAP_D, u, MAP_U));
            x[i] = i % 2 ? -INFINITY : INFINITY;
            CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_control(k, 0.5, x, MAP_D, u, MAP_U));
            x[i] = saved;
        }
        CHECK(all_equal(u, MAP_U + 1, -7.0), "a failed control left u untouched");
        /* x and u overlapping, in either order, or the same buffer. */
        memcpy(buf, xs, MAP_D * sizeof(double));
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                  socflow_controller_control(k, 0.5, buf, MAP_D, buf + MAP_D - 1, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                  socflow_controller_control(k, 0.5, buf + 1, MAP_D, buf, MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                  socflow_controller_control(k, 0.5, buf, MAP_D, buf, MAP_U));
        CHECK(memcmp(buf, xs, MAP_D * sizeof(double)) == 0, "a failed control left x untouched");
        /* Adjacent but disjoint is fine. */
        CHECK_OK(socflow_controller_control(k, 0.5, buf, MAP_D, buf + MAP_D, MAP_U));

        /* value */
        value = -7.0;
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_value(k, 0.5, NULL, MAP_D, &value));
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_controller_value(k, 0.5, x, MAP_D, NULL));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_value(k, 0.5, x, MAP_D - 1, &value));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_controller_value(k, 0.5, x, MAP_D + 1, &value));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_value(k, NAN, x, MAP_D, &value));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_value(k, -INFINITY, x, MAP_D, &value));
        x[2] = NAN;
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_value(k, 0.5, x, MAP_D, &value));
        x[2] = INFINITY;
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, socflow_controller_value(k, 0.5, x, MAP_D, &value));
        x[2] = xs[2];
        CHECK(value == -7.0, "a failed value left its output untouched");

        /* control_batch: NULL, lengths (rows not whole, outputs not matching),
         * non-finite, overlap. */
        for (i = 0; i < 3 * MAP_D + 1; i++) bx[i] = xs[i % MAP_D];
        fill(bu, 3 * MAP_U + 1, -7.0);
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER,
                  socflow_controller_control_batch(k, 0.5, NULL, 3 * MAP_D, bu, 3 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, NULL, 3 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D + 1, bu, 3 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D - 1, bu, 3 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bu, 3 * MAP_U - 1));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bu, 3 * MAP_U + 1));
        CHECK_ERR(SOCFLOW_ERROR_LENGTH,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bu, 2 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE,
                  socflow_controller_control_batch(k, NAN, bx, 3 * MAP_D, bu, 3 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE,
                  socflow_controller_control_batch(k, INFINITY, bx, 3 * MAP_D, bu, 3 * MAP_U));
        bx[2 * MAP_D + 1] = NAN;
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bu, 3 * MAP_U));
        bx[2 * MAP_D + 1] = -INFINITY;
        CHECK_ERR(SOCFLOW_ERROR_NON_FINITE,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bu, 3 * MAP_U));
        bx[2 * MAP_D + 1] = xs[1];
        CHECK(all_equal(bu, 3 * MAP_U + 1, -7.0), "a failed control_batch left us untouched");
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                  socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bx + 1, 3 * MAP_U));
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                  socflow_controller_control_batch(k, 0.5, bx + 2, 2 * MAP_D, bx, 2 * MAP_U));
        CHECK_OK(socflow_controller_control_batch(k, 0.5, bx, 3 * MAP_D, bu, 3 * MAP_U));
    }

    CHECK_OK(socflow_controller_destroy(c));
    CHECK_OK(socflow_controller_destroy(c32));
    CHECK_OK(socflow_model_destroy(model));
    CHECK_OK(socflow_model_destroy(velocity));
    CHECK_OK(socflow_model_destroy(score));
}

/* ------------------------------------------------------------------------ */
/* Simulation                                                                */

/* The dynamics the harness simulates in Rust too, with the same arithmetic:
 * f_i = a_i x_i + sum_j B_ij u_j + 0.1 t, L = sum_j 0.5 u_j^2 + sum_i 0.25 x_i^2,
 * g = sum_i x_i^2. */
struct test_dynamics {
    const double *a; /* d */
    const double *b; /* d x du, row-major */
    size_t d, du;
    double fail_after; /* the failing callbacks return nonzero from this time on */
};

static int32_t drift(void *user, double t, const double *x, const double *u, double *out) {
    const struct test_dynamics *p = user;
    size_t i, j;
    for (i = 0; i < p->d; i++) {
        double s = p->a[i] * x[i];
        for (j = 0; j < p->du; j++) s += p->b[i * p->du + j] * u[j];
        out[i] = s + 0.1 * t;
    }
    return 0;
}

static int32_t running_cost(void *user, double t, const double *x, const double *u, double *out) {
    const struct test_dynamics *p = user;
    double s = 0.0;
    size_t i;
    (void)t;
    for (i = 0; i < p->du; i++) s += 0.5 * u[i] * u[i];
    for (i = 0; i < p->d; i++) s += 0.25 * x[i] * x[i];
    *out = s;
    return 0;
}

static int32_t terminal_cost(void *user, const double *x, double *out) {
    const struct test_dynamics *p = user;
    double s = 0.0;
    size_t i;
    for (i = 0; i < p->d; i++) s += x[i] * x[i];
    *out = s;
    return 0;
}

static int32_t failing_drift(void *user, double t, const double *x, const double *u, double *out) {
    const struct test_dynamics *p = user;
    drift(user, t, x, u, out);
    return t >= p->fail_after ? 42 : 0;
}

static int32_t failing_running_cost(void *user, double t, const double *x, const double *u,
                                    double *out) {
    const struct test_dynamics *p = user;
    running_cost(user, t, x, u, out);
    return t >= p->fail_after ? -1 : 0;
}

static int32_t failing_terminal_cost(void *user, const double *x, double *out) {
    terminal_cost(user, x, out);
    return 3;
}

/* Fills simulate options from the harness's `prefix.x0` and `prefix.params`
 * ([t0, t1, steps, sigma, paths, seed]). */
static struct socflow_simulate_options sim_options(const char *prefix, size_t d) {
    char key[64];
    const double *p;
    struct socflow_simulate_options o;
    memset(&o, 0, sizeof o);
    snprintf(key, sizeof key, "%s.x0", prefix);
    o.x0 = expect(key, d, NULL);
    o.x0_len = d;
    snprintf(key, sizeof key, "%s.params", prefix);
    p = expect(key, 6, NULL);
    o.t0 = p[0];
    o.t1 = p[1];
    o.steps = (size_t)p[2];
    o.sigma = p[3];
    o.paths = (size_t)p[4];
    o.seed = (uint64_t)p[5];
    o.threads = 0;
    return o;
}

/* Simulates with `o` and `dyn` and checks finals, costs and trajectories against
 * `prefix.final`, `.cost`, `.traj`; also without costs and trajectories. */
static void check_simulation(struct socflow_controller c, const char *prefix,
                             const struct socflow_simulate_options *o,
                             const struct socflow_dynamics *dyn, size_t d, int f32) {
    char key[64], what[96];
    size_t nf = o->paths * d, nt = o->paths * (o->steps + 1) * d;
    double *finals = dalloc(nf), *costs = dalloc(o->paths), *traj = dalloc(nt);
    const double *wf, *wc, *wt;
    snprintf(key, sizeof key, "%s.final", prefix);
    wf = expect(key, nf, NULL);
    snprintf(key, sizeof key, "%s.cost", prefix);
    wc = expect(key, o->paths, NULL);
    snprintf(key, sizeof key, "%s.traj", prefix);
    wt = expect(key, nt, NULL);
    if (CHECK_OK(socflow_controller_simulate(c, o, dyn, finals, nf, costs, o->paths, traj, nt))) {
        snprintf(what, sizeof what, "%s final states (threads %zu)", prefix, o->threads);
        check_array_at(__FILE__, __LINE__, what, finals, wf, nf, f32);
        snprintf(what, sizeof what, "%s costs (threads %zu)", prefix, o->threads);
        check_array_at(__FILE__, __LINE__, what, costs, wc, o->paths, f32);
        snprintf(what, sizeof what, "%s trajectories (threads %zu)", prefix, o->threads);
        check_array_at(__FILE__, __LINE__, what, traj, wt, nt, f32);
    }
    /* Costs and trajectories are optional. */
    fill(finals, nf, 0.0);
    if (CHECK_OK(socflow_controller_simulate(c, o, dyn, finals, nf, NULL, 0, NULL, 0))) {
        snprintf(what, sizeof what, "%s final states without costs", prefix);
        check_array_at(__FILE__, __LINE__, what, finals, wf, nf, f32);
    }
    free(finals);
    free(costs);
    free(traj);
}

static void test_simulate_results(void) {
    struct socflow_model map = load("map.safetensors");
    struct socflow_model plain = load("plain.safetensors");
    struct test_dynamics p;
    struct socflow_dynamics dyn;
    struct socflow_simulate_options o;
    size_t f;
    p.a = expect("dyn.a", MAP_D, NULL);
    p.b = expect("dyn.b", MAP_D * MAP_U, NULL);
    p.d = MAP_D;
    p.du = MAP_U;
    p.fail_after = 1e300;
    dyn.state_dim = MAP_D;
    dyn.control_dim = MAP_U;
    dyn.drift = drift;
    dyn.running_cost = running_cost;
    dyn.terminal_cost = terminal_cost;
    dyn.user = &p;
    for (f = 0; f < 2; f++) {
        uint32_t precision = f ? SOCFLOW_PRECISION_F32 : SOCFLOW_PRECISION_F64;
        struct socflow_controller cm = make_controller(map, precision);
        struct socflow_controller cp = make_controller(plain, precision);
        /* C callbacks over the non-square control map. */
        o = sim_options("map.sim", MAP_D);
        check_simulation(cm, "map.sim", &o, &dyn, MAP_D, (int)f);
        /* The thread count does not change the result. */
        o.threads = 1;
        check_simulation(cm, "map.sim", &o, &dyn, MAP_D, (int)f);
        o.threads = 3;
        check_simulation(cm, "map.sim", &o, &dyn, MAP_D, (int)f);
        /* The default dynamics dz = u dt + sigma dW, cost |u|^2 / 2. */
        o = sim_options("plain.sim", PLAIN_D);
        check_simulation(cp, "plain.sim", &o, NULL, PLAIN_D, (int)f);
        o.threads = 2;
        check_simulation(cp, "plain.sim", &o, NULL, PLAIN_D, (int)f);
        CHECK_OK(socflow_controller_destroy(cm));
        CHECK_OK(socflow_controller_destroy(cp));
    }
    CHECK_OK(socflow_model_destroy(map));
    CHECK_OK(socflow_model_destroy(plain));
}

static void test_simulate_errors(void) {
    struct socflow_model map = load("map.safetensors");
    struct socflow_model plain = load("plain.safetensors");
    struct socflow_controller cm = make_controller(map, SOCFLOW_PRECISION_F64);
    struct socflow_controller cp = make_controller(plain, SOCFLOW_PRECISION_F64);
    struct test_dynamics p;
    struct socflow_dynamics dyn, bad;
    struct socflow_simulate_options o, base;
    double x0[MAP_D + 1];
    size_t paths, steps, nf, nt;
    double *finals, *costs, *traj, *big;
    p.a = expect("dyn.a", MAP_D, NULL);
    p.b = expect("dyn.b", MAP_D * MAP_U, NULL);
    p.d = MAP_D;
    p.du = MAP_U;
    p.fail_after = 0.5;
    dyn.state_dim = MAP_D;
    dyn.control_dim = MAP_U;
    dyn.drift = drift;
    dyn.running_cost = running_cost;
    dyn.terminal_cost = terminal_cost;
    dyn.user = &p;
    base = sim_options("map.sim", MAP_D);
    memcpy(x0, base.x0, MAP_D * sizeof(double));
    x0[MAP_D] = 0.0;
    base.x0 = x0;
    paths = base.paths;
    steps = base.steps;
    nf = paths * MAP_D;
    nt = paths * (steps + 1) * MAP_D;
    finals = dalloc(nf + 1);
    costs = dalloc(paths + 1);
    traj = dalloc(nt + 1);
    big = dalloc(nf + paths + nt);
    fill(finals, nf + 1, -7.0);
    fill(costs, paths + 1, -7.0);
    fill(traj, nt + 1, -7.0);

#define SIM(opts, dy, fl, cl, tl) socflow_controller_simulate(cm, opts, dy, finals, fl, costs, cl, traj, tl)

    /* NULL options, x0, final states; NULL dynamics needs a square controller. */
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, SIM(NULL, &dyn, nf, paths, nt));
    o = base;
    o.x0 = NULL;
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, SIM(&o, &dyn, nf, paths, nt));
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER,
              socflow_controller_simulate(cm, &base, &dyn, NULL, nf, costs, paths, traj, nt));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&base, NULL, nf, paths, nt));
    bad = dyn;
    bad.drift = NULL;
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, SIM(&base, &bad, nf, paths, nt));
    /* Dynamics of other dimensions. */
    bad = dyn;
    bad.state_dim = MAP_D + 1;
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &bad, nf, paths, nt));
    bad = dyn;
    bad.control_dim = MAP_U + 1;
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &bad, nf, paths, nt));
    /* Wrong lengths. */
    o = base;
    o.x0_len = MAP_D - 1;
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&o, &dyn, nf, paths, nt));
    o.x0_len = MAP_D + 1;
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&o, &dyn, nf, paths, nt));
    o.x0_len = 0;
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&o, &dyn, nf, paths, nt));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf - 1, paths, nt));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf + 1, paths, nt));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf, paths - 1, nt));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf, paths + 1, nt));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf, paths, nt - 1));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf, paths, nt + 1));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, SIM(&base, &dyn, nf, paths, paths * steps * MAP_D));
    /* Non-finite x0. */
    o = base;
    x0[1] = NAN;
    CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, SIM(&o, &dyn, nf, paths, nt));
    x0[1] = INFINITY;
    CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, SIM(&o, &dyn, nf, paths, nt));
    x0[1] = expect("map.sim.x0", MAP_D, NULL)[1];
    /* Out-of-range arguments: zero steps or paths, t1 <= t0, sigma < 0, and
     * non-finite times or sigma (out of range too: the runtime reports them as
     * invalid arguments). */
    o = base;
    o.steps = 0;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
              SIM(&o, &dyn, nf, paths, paths * MAP_D));
    o = base;
    o.paths = 0;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&o, &dyn, 0, 0, 0));
    o = base;
    o.t1 = o.t0;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&o, &dyn, nf, paths, nt));
    o.t1 = o.t0 - 0.5;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&o, &dyn, nf, paths, nt));
    o = base;
    o.sigma = -0.1;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&o, &dyn, nf, paths, nt));
    o.sigma = NAN;
    CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, SIM(&o, &dyn, nf, paths, nt));
    o.sigma = INFINITY;
    CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, SIM(&o, &dyn, nf, paths, nt));
    o = base;
    o.t0 = NAN;
    CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, SIM(&o, &dyn, nf, paths, nt));
    o = base;
    o.t1 = INFINITY;
    CHECK_ERR(SOCFLOW_ERROR_NON_FINITE, SIM(&o, &dyn, nf, paths, nt));
    /* Sizes that overflow. */
    o = base;
    o.steps = SIZE_MAX;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&o, &dyn, nf, paths, nt));
    o = base;
    o.paths = SIZE_MAX / 2;
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, SIM(&o, &dyn, nf, paths, nt));
    /* Overlapping outputs. */
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
              socflow_controller_simulate(cm, &base, &dyn, big, nf, big + nf - 1, paths, NULL, 0));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
              socflow_controller_simulate(cm, &base, &dyn, big, nf, NULL, 0, big + 1, nt));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
              socflow_controller_simulate(cm, &base, &dyn, big, nf, big + nf, paths, big + nf + 1, nt));
    CHECK_OK(socflow_controller_simulate(cm, &base, &dyn, big, nf, big + nf, paths, big + nf + paths, nt));
    /* Callbacks that fail stop the roll-out. */
    bad = dyn;
    bad.drift = failing_drift;
    CHECK_ERR(SOCFLOW_ERROR_CALLBACK, SIM(&base, &bad, nf, paths, nt));
    CHECK(strstr(last_error(), "drift") != NULL && strstr(last_error(), "42") != NULL,
          "the error names the callback and its value: %s", last_error());
    bad = dyn;
    bad.running_cost = failing_running_cost;
    CHECK_ERR(SOCFLOW_ERROR_CALLBACK, SIM(&base, &bad, nf, paths, nt));
    CHECK(strstr(last_error(), "running_cost") != NULL, "the error names the callback: %s",
          last_error());
    bad = dyn;
    bad.terminal_cost = failing_terminal_cost;
    CHECK_ERR(SOCFLOW_ERROR_CALLBACK, SIM(&base, &bad, nf, paths, nt));
    CHECK(strstr(last_error(), "terminal_cost") != NULL, "the error names the callback: %s",
          last_error());
    o = base;
    o.threads = 2;
    bad = dyn;
    bad.drift = failing_drift;
    CHECK_ERR(SOCFLOW_ERROR_CALLBACK, SIM(&o, &bad, nf, paths, nt));
    /* Outputs are written only on success. */
    CHECK(all_equal(finals, nf + 1, -7.0) && all_equal(costs, paths + 1, -7.0) &&
              all_equal(traj, nt + 1, -7.0),
          "failed simulations left their outputs untouched");
    /* Running and terminal costs may be NULL (zero). */
    bad = dyn;
    bad.running_cost = NULL;
    bad.terminal_cost = NULL;
    if (CHECK_OK(SIM(&base, &bad, nf, paths, nt))) {
        CHECK(all_equal(costs, paths, 0.0), "no cost callbacks give zero costs");
    }
#undef SIM

    /* The default dynamics over a square controller: the same checks of options. */
    {
        struct socflow_simulate_options q = sim_options("plain.sim", PLAIN_D);
        size_t qf = q.paths * PLAIN_D;
        double *out = dalloc(qf);
        double longer[PLAIN_D + 1];
        q.steps = 0;
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                  socflow_controller_simulate(cp, &q, NULL, out, qf, NULL, 0, NULL, 0));
        q = sim_options("plain.sim", PLAIN_D);
        memcpy(longer, q.x0, PLAIN_D * sizeof(double));
        longer[PLAIN_D] = 0.0;
        q.x0 = longer;
        q.x0_len = PLAIN_D + 1;
        CHECK_ERR(SOCFLOW_ERROR_LENGTH,
                  socflow_controller_simulate(cp, &q, NULL, out, qf, NULL, 0, NULL, 0));
        q = sim_options("plain.sim", PLAIN_D);
        CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER,
                  socflow_controller_simulate(cp, NULL, NULL, out, qf, NULL, 0, NULL, 0));
        CHECK_OK(socflow_controller_simulate(cp, &q, NULL, out, qf, NULL, 0, NULL, 0));
        free(out);
    }

    free(finals);
    free(costs);
    free(traj);
    free(big);
    CHECK_OK(socflow_controller_destroy(cm));
    CHECK_OK(socflow_controller_destroy(cp));
    CHECK_OK(socflow_model_destroy(map));
    CHECK_OK(socflow_model_destroy(plain));
}

/* ------------------------------------------------------------------------ */
/* Samplers                                                                  */

/* Options from the harness's `prefix.params`:
 * [solver, steps, rtol, atol, seed, log_density, n]. */
static struct socflow_sampler_options sampler_options(const char *prefix, size_t *n) {
    char key[64];
    const double *p;
    struct socflow_sampler_options o;
    CHECK_OK(socflow_sampler_options_default(&o));
    snprintf(key, sizeof key, "%s.params", prefix);
    p = expect(key, 7, NULL);
    o.solver = (uint32_t)p[0];
    o.steps = (size_t)p[1];
    o.rtol = p[2];
    o.atol = p[3];
    o.seed = (uint64_t)p[4];
    o.log_density = (uint32_t)p[5];
    *n = (size_t)p[6];
    return o;
}

/* Draws the harness's case `prefix` from `model` in one call and in two, and
 * checks the samples (and log-densities) against the Rust API's. */
static void check_sampler_case(struct socflow_model model, const char *prefix, size_t d, int f32,
                               size_t threads) {
    char key[64], what[128];
    size_t n, split, dim = 0;
    struct socflow_sampler_options o = sampler_options(prefix, &n);
    const double *wx, *wl = NULL;
    double *x = dalloc(n * d), *l = dalloc(n);
    struct socflow_sampler s;
    o.precision = f32 ? SOCFLOW_PRECISION_F32 : SOCFLOW_PRECISION_F64;
    o.threads = threads;
    snprintf(key, sizeof key, "%s.x", prefix);
    wx = expect(key, n * d, NULL);
    if (o.log_density) {
        snprintf(key, sizeof key, "%s.logp", prefix);
        wl = expect(key, n, NULL);
    }
    s = make_sampler(model, &o);
    CHECK_OK(socflow_sampler_dim(s, &dim));
    CHECK(dim == d, "%s: sampler dim %zu, expected %zu", prefix, dim, d);
    snprintf(what, sizeof what, "%s samples (%s, threads %zu, one call)", prefix, f32 ? "f32" : "f64",
             threads);
    if (CHECK_OK(socflow_sampler_sample(s, 0, x, n * d, wl ? l : NULL, wl ? n : 0))) {
        check_array_at(__FILE__, __LINE__, what, x, wx, n * d, f32);
        if (wl) check_array_at(__FILE__, __LINE__, what, l, wl, n, f32);
    }
    /* Two calls, consecutive ranges, give the same samples as one. */
    split = n / 3 + 1;
    fill(x, n * d, 0.0);
    fill(l, n, 0.0);
    snprintf(what, sizeof what, "%s samples (%s, threads %zu, calls of %zu and %zu)", prefix,
             f32 ? "f32" : "f64", threads, split, n - split);
    if (CHECK_OK(socflow_sampler_sample(s, 0, x, split * d, wl ? l : NULL, wl ? split : 0)) &&
        CHECK_OK(socflow_sampler_sample(s, split, x + split * d, (n - split) * d,
                                        wl ? l + split : NULL, wl ? n - split : 0))) {
        check_array_at(__FILE__, __LINE__, what, x, wx, n * d, f32);
        if (wl) check_array_at(__FILE__, __LINE__, what, l, wl, n, f32);
    }
    /* Samples without their log-densities: the same samples with fixed steps; with
     * adaptive steps the log-density joins the error norm, so the steps (and the
     * samples, within the tolerance) differ. */
    fill(x, n * d, 0.0);
    if (CHECK_OK(socflow_sampler_sample(s, 1, x, (n - 1) * d, NULL, 0))) {
        snprintf(what, sizeof what, "%s samples 1.. without log-densities", prefix);
        if (o.solver != SOCFLOW_SOLVER_DOPRI5 || !wl) {
            check_array_at(__FILE__, __LINE__, what, x, wx + d, (n - 1) * d, f32);
        } else {
            size_t i;
            count_check();
            for (i = 0; i < (n - 1) * d; i++) {
                if (!close_f32(x[i], wx[d + i], 100 * o.rtol)) {
                    FAIL("%s[%zu] = %.17g, expected %.17g within %g", what, i, x[i], wx[d + i],
                         100 * o.rtol);
                    break;
                }
            }
        }
    }
    CHECK_OK(socflow_sampler_destroy(s));
    free(x);
    free(l);
}

static void test_sampler_results(void) {
    struct socflow_model plain = load("plain.safetensors");
    struct socflow_model velocity = load("velocity.safetensors");
    struct socflow_model score = load("score.safetensors");
    struct socflow_sampler_options o;
    static const char *vel_cases[] = {"velocity.euler", "velocity.heun", "velocity.rk4",
                                      "velocity.dopri5"};
    static const char *score_cases[] = {"score.rk4", "score.em", "score.sheun"};
    size_t i;
    check_sampler_case(plain, "plain.rk4", PLAIN_D, 0, 0);
    check_sampler_case(plain, "plain.rk4", PLAIN_D, 0, 2);
    check_sampler_case(plain, "plain.rk4", PLAIN_D, 1, 0);
    for (i = 0; i < 4; i++) {
        check_sampler_case(velocity, vel_cases[i], MLP_D, 0, 0);
        if (i < 3) check_sampler_case(velocity, vel_cases[i], MLP_D, 1, 1);
    }
    /* A score model: the probability-flow ODE (with log-densities) and the reverse
     * SDE, whose Brownian increments are keyed by (seed, sample, step): the same
     * samples on any thread count and in any split into calls. */
    for (i = 0; i < 3; i++) {
        check_sampler_case(score, score_cases[i], MLP_D, 0, 0);
        check_sampler_case(score, score_cases[i], MLP_D, 0, 2);
        check_sampler_case(score, score_cases[i], MLP_D, 1, 1);
    }
    /* The defaults: what the header documents, and what NULL options mean. */
    if (CHECK_OK(socflow_sampler_options_default(&o))) {
        CHECK(o.solver == SOCFLOW_SOLVER_RK4 && o.steps == 32 && o.rtol == 1e-5 &&
                  o.atol == 1e-5 && o.seed == 0 && o.precision == SOCFLOW_PRECISION_F64 &&
                  o.log_density == 0 && o.threads == 0,
              "default sampler options {solver %u, steps %zu, rtol %g, atol %g, seed %llu, "
              "precision %u, log_density %u, threads %zu}",
              o.solver, o.steps, o.rtol, o.atol, (unsigned long long)o.seed, o.precision,
              o.log_density, o.threads);
    }
    {
        size_t n;
        const double *want = expect("plain.default.x", 0, &n);
        double *x = dalloc(n);
        struct socflow_sampler s = make_sampler(plain, NULL);
        if (CHECK_OK(socflow_sampler_sample(s, 0, x, n, NULL, 0))) {
            CHECK_F64("samples with NULL (default) options", x, want, n);
        }
        CHECK_OK(socflow_sampler_destroy(s));
        free(x);
    }
    CHECK_OK(socflow_model_destroy(plain));
    CHECK_OK(socflow_model_destroy(velocity));
    CHECK_OK(socflow_model_destroy(score));
}

static void test_sampler_errors(void) {
    struct socflow_model plain = load("plain.safetensors");
    struct socflow_model score = load("score.safetensors");
    struct socflow_sampler_options o, def;
    struct socflow_sampler s, out;
    double x[4 * PLAIN_D + 1], l[5], buf[4 * PLAIN_D + 4];
    size_t i;
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_sampler_options_default(NULL));
    CHECK_OK(socflow_sampler_options_default(&def));
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_sampler_create(plain, &def, NULL));
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_sampler_create(plain, NULL, NULL));

#define CREATE_FAILS(status, opts)                                           \
    do {                                                                     \
        out.id = JUNK_ID;                                                    \
        CHECK_ERR(status, socflow_sampler_create(plain, opts, &out));        \
        CHECK(out.id == 0, "a failed sampler_create leaves the null handle"); \
    } while (0)

    /* Unknown solver and precision, zero steps, bad tolerances. */
    {
        uint32_t solvers[] = {SOCFLOW_SOLVER_STOCHASTIC_HEUN + 1, 99, UINT32_MAX};
        for (i = 0; i < 3; i++) {
            o = def;
            o.solver = solvers[i];
            CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
        }
        for (i = 0; i < 3; i++) {
            o = def;
            o.precision = i == 0 ? 2 : solvers[i];
            CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
        }
    }
    /* The reverse-SDE solvers sample score models only. */
    for (i = SOCFLOW_SOLVER_EULER_MARUYAMA; i <= SOCFLOW_SOLVER_STOCHASTIC_HEUN; i++) {
        o = def;
        o.solver = (uint32_t)i;
        CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
        CHECK(strstr(last_error(), "score (diffusion) model") != NULL,
              "an SDE solver on a flow model: the message \"%s\" names score models",
              last_error());
    }
    for (i = SOCFLOW_SOLVER_EULER; i <= SOCFLOW_SOLVER_RK4; i++) {
        o = def;
        o.solver = (uint32_t)i;
        o.steps = 0;
        CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
    }
    {
        double bad[] = {0.0, -1e-3, 1e-20, NAN, INFINITY, -INFINITY};
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            o = def;
            o.solver = SOCFLOW_SOLVER_DOPRI5;
            o.rtol = bad[i];
            CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
            if (bad[i] != 1e-20) { /* a tiny atol is fine */
                o = def;
                o.solver = SOCFLOW_SOLVER_DOPRI5;
                o.atol = bad[i];
                CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
            }
        }
        /* Below 10 epsilon of single precision. */
        o = def;
        o.solver = SOCFLOW_SOLVER_DOPRI5;
        o.precision = SOCFLOW_PRECISION_F32;
        o.rtol = 1e-7;
        CREATE_FAILS(SOCFLOW_ERROR_INVALID_ARGUMENT, &o);
        /* Dopri5 ignores the step count. */
        o = def;
        o.solver = SOCFLOW_SOLVER_DOPRI5;
        o.steps = 0;
        s = make_sampler(plain, &o);
        CHECK_OK(socflow_sampler_destroy(s));
    }
#undef CREATE_FAILS
#define SCORE_CREATE_FAILS(opts, message)                                         \
    do {                                                                          \
        out.id = JUNK_ID;                                                         \
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,                                 \
                  socflow_sampler_create(score, opts, &out));                     \
        CHECK(out.id == 0, "a failed sampler_create leaves the null handle");     \
        CHECK(strstr(last_error(), message) != NULL, "the message \"%s\" lacks %s", \
              last_error(), message);                                             \
    } while (0)

    /* A score model: NULL options (RK4 on the probability-flow ODE) and the reverse
     * SDE sample; the reverse SDE has no log-density and needs steps. */
    s = make_sampler(score, NULL);
    CHECK_OK(socflow_sampler_destroy(s));
    for (i = SOCFLOW_SOLVER_EULER_MARUYAMA; i <= SOCFLOW_SOLVER_STOCHASTIC_HEUN; i++) {
        o = def;
        o.solver = (uint32_t)i;
        o.steps = 4;
        o.precision = i == SOCFLOW_SOLVER_EULER_MARUYAMA ? SOCFLOW_PRECISION_F32
                                                          : SOCFLOW_PRECISION_F64;
        s = make_sampler(score, &o);
        /* A log-density buffer is refused, samples are drawn. */
        CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, socflow_sampler_sample(s, 0, x, 4 * MLP_D, l, 4));
        fill(x, 4 * MLP_D, 0.0);
        CHECK_OK(socflow_sampler_sample(s, 0, x, 4 * MLP_D, NULL, 0));
        CHECK(isfinite(x[0]) && x[0] != 0.0, "reverse-SDE sample %g", x[0]);
        CHECK_OK(socflow_sampler_destroy(s));
        o.log_density = 1;
        SCORE_CREATE_FAILS(&o, "log_density needs an ODE solver");
        o.log_density = 0;
        o.steps = 0;
        SCORE_CREATE_FAILS(&o, "steps = 0");
    }
#undef SCORE_CREATE_FAILS

    /* dim and sample. */
    o = def;
    o.steps = 2;
    o.log_density = 1;
    s = make_sampler(plain, &o);
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_sampler_dim(s, NULL));
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_sampler_sample(s, 0, NULL, 4 * PLAIN_D, l, 4));
    CHECK_ERR(SOCFLOW_ERROR_NULL_POINTER, socflow_sampler_sample(s, 0, NULL, 4 * PLAIN_D, NULL, 0));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, 0, NULL, 0));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, 4 * PLAIN_D + 1, NULL, 0));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, 4 * PLAIN_D - 1, NULL, 0));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, PLAIN_D - 1, NULL, 0));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, 4 * PLAIN_D, l, 3));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, 4 * PLAIN_D, l, 5));
    CHECK_ERR(SOCFLOW_ERROR_LENGTH, socflow_sampler_sample(s, 0, x, 4 * PLAIN_D, l, 0));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
              socflow_sampler_sample(s, 0, buf, 4 * PLAIN_D, buf + 4 * PLAIN_D - 1, 4));
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, socflow_sampler_sample(s, 0, buf + 2, 4 * PLAIN_D, buf, 4));
    CHECK_OK(socflow_sampler_sample(s, 0, buf, 4 * PLAIN_D, buf + 4 * PLAIN_D, 4));
    /* Sample indices go up to 2^48 - 1 (the generator's limit). Past it: an invalid
     * argument, never wrapped-around indices. */
    {
        const uint64_t last = ((uint64_t)1 << 48) - 1;
        const uint64_t firsts[] = {last - 2, last + 1, UINT64_MAX - 1, UINT64_MAX};
        CHECK_OK(socflow_sampler_sample(s, last - 3, x, 4 * PLAIN_D, l, 4));
        for (i = 0; i < sizeof firsts / sizeof firsts[0]; i++) {
            CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT,
                      socflow_sampler_sample(s, firsts[i], x, 4 * PLAIN_D, l, 4));
        }
    }
    CHECK_OK(socflow_sampler_destroy(s));
    /* A log-density buffer needs a sampler made with log_density. */
    o = def;
    o.steps = 2;
    s = make_sampler(plain, &o);
    CHECK_ERR(SOCFLOW_ERROR_INVALID_ARGUMENT, socflow_sampler_sample(s, 0, x, 4 * PLAIN_D, l, 4));
    CHECK_OK(socflow_sampler_sample(s, 0, x, 4 * PLAIN_D, NULL, 0));
    CHECK_OK(socflow_sampler_destroy(s));
    CHECK_OK(socflow_model_destroy(plain));
    CHECK_OK(socflow_model_destroy(score));
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */

#define THREADS 4

static void spawn(pthread_t *t, void *(*f)(void *), void *arg) {
    if (pthread_create(t, NULL, f, arg) != 0) die("cannot start a thread");
}

static void join(pthread_t t) {
    if (pthread_join(t, NULL) != 0) die("cannot join a thread");
}

static void pause_us(long us) {
    struct timespec ts;
    ts.tv_sec = us / 1000000L;
    ts.tv_nsec = (us % 1000000L) * 1000L;
    nanosleep(&ts, NULL);
}

/* A stop flag shared by threads (a mutex: C99 has no atomics). */
struct flag {
    pthread_mutex_t lock;
    int value;
};

static int flag_get(struct flag *f) {
    int v;
    pthread_mutex_lock(&f->lock);
    v = f->value;
    pthread_mutex_unlock(&f->lock);
    return v;
}

static void flag_set(struct flag *f, int v) {
    pthread_mutex_lock(&f->lock);
    f->value = v;
    pthread_mutex_unlock(&f->lock);
}

/* Each thread makes its own controllers (f64 and f32) over one shared model. */
static void *shared_model_worker(void *arg) {
    struct socflow_model model = *(struct socflow_model *)arg;
    int round;
    for (round = 0; round < (quick ? 1 : 5); round++) {
        struct socflow_controller c64, c32;
        struct socflow_model_info info;
        c64.id = c32.id = 0;
        CHECK_OK(socflow_model_get_info(model, &info));
        if (CHECK_OK(socflow_controller_create(model, SOCFLOW_PRECISION_F32, &c32))) {
            check_controls(c32, 1);
            CHECK_OK(socflow_controller_destroy(c32));
        }
        if (CHECK_OK(socflow_controller_create(model, SOCFLOW_PRECISION_F64, &c64))) {
            check_controls(c64, 0);
            CHECK_OK(socflow_controller_destroy(c64));
        }
    }
    return NULL;
}

static void test_threads_shared_model(void) {
    /* A fresh model: the threads race to build its single-precision copy. */
    struct socflow_model model = load("map.safetensors");
    pthread_t t[THREADS];
    size_t i;
    for (i = 0; i < THREADS; i++) spawn(&t[i], shared_model_worker, &model);
    for (i = 0; i < THREADS; i++) join(t[i]);
    CHECK_OK(socflow_model_destroy(model));
}

struct sampler_job {
    struct socflow_sampler sampler;
    size_t first, count, d;
    const double *want_x, *want_l;
};

static void *shared_sampler_worker(void *arg) {
    const struct sampler_job *j = arg;
    double *x = dalloc(j->count * j->d), *l = dalloc(j->count);
    int round;
    for (round = 0; round < 3; round++) {
        if (CHECK_OK(socflow_sampler_sample(j->sampler, j->first, x, j->count * j->d, l, j->count))) {
            CHECK_F64("a thread's samples from a shared sampler", x, j->want_x + j->first * j->d,
                      j->count * j->d);
            CHECK_F64("a thread's log-densities from a shared sampler", l, j->want_l + j->first,
                      j->count);
        }
    }
    free(x);
    free(l);
    return NULL;
}

static void test_threads_shared_sampler(void) {
    struct socflow_model model = load("plain.safetensors");
    size_t n, i, per;
    struct socflow_sampler_options o = sampler_options("plain.rk4", &n);
    struct socflow_sampler s;
    struct sampler_job jobs[THREADS];
    pthread_t t[THREADS];
    const double *wx = expect("plain.rk4.x", n * PLAIN_D, NULL);
    const double *wl = expect("plain.rk4.logp", n, NULL);
    s = make_sampler(model, &o);
    /* The model may go: the sampler keeps what it needs. */
    CHECK_OK(socflow_model_destroy(model));
    per = n / THREADS;
    for (i = 0; i < THREADS; i++) {
        jobs[i].sampler = s;
        jobs[i].first = i * per;
        jobs[i].count = i + 1 == THREADS ? n - i * per : per;
        jobs[i].d = PLAIN_D;
        jobs[i].want_x = wx;
        jobs[i].want_l = wl;
        spawn(&t[i], shared_sampler_worker, &jobs[i]);
    }
    for (i = 0; i < THREADS; i++) join(t[i]);
    CHECK_OK(socflow_sampler_destroy(s));
}

struct hammer_job {
    struct socflow_controller ctl;
    struct flag *stop;  /* NULL: run `calls` calls */
    long calls;
    long ok, busy, closed, other;
};

/* Calls one controller over and over: the only outcomes allowed are success with
 * the right control, SOCFLOW_ERROR_BUSY while another thread is inside, and (once
 * it is destroyed) SOCFLOW_ERROR_INVALID_HANDLE. */
static void *hammer_worker(void *arg) {
    struct hammer_job *j = arg;
    const double *t = expect("map.t", 0, NULL);
    const double *xs = expect("map.x", 0, NULL);
    const double *us = expect("map.u", 0, NULL);
    long i;
    for (i = 0; j->stop ? !flag_get(j->stop) : i < j->calls; i++) {
        size_t k = (size_t)i % 3;
        double u[MAP_U] = {-7.0, -7.0};
        enum socflow_status s;
        /* A control loop between calls now and then, which is when a destroy can
         * win (under valgrind, which runs one thread at a time, it would wait long
         * for both threads to be outside a call otherwise). */
        if (j->stop && i % 32 == 31) pause_us(50);
        s = socflow_controller_control(j->ctl, t[k], xs + k * MAP_D, MAP_D, u, MAP_U);
        if (s == SOCFLOW_OK) {
            j->ok++;
            if (!close_rel(u[0], us[k * MAP_U], RTOL64) || !close_rel(u[1], us[k * MAP_U + 1], RTOL64)) {
                FAIL("control under contention: (%.17g, %.17g), expected (%.17g, %.17g)", u[0], u[1],
                     us[k * MAP_U], us[k * MAP_U + 1]);
                break;
            }
        } else if (s == SOCFLOW_ERROR_BUSY) {
            j->busy++;
            if (last_error()[0] == '\0') FAIL("SOCFLOW_ERROR_BUSY with an empty last error");
        } else if (s == SOCFLOW_ERROR_INVALID_HANDLE && j->stop) {
            j->closed++;
            break;
        } else {
            j->other++;
            FAIL("control under contention gave %s: %s", status_name(s), last_error());
            break;
        }
    }
    return NULL;
}

static void test_threads_one_controller(void) {
    struct socflow_model model = load("map.safetensors");
    struct socflow_controller c = make_controller(model, SOCFLOW_PRECISION_F64);
    struct hammer_job jobs[2];
    pthread_t t[2];
    struct flag stop = {PTHREAD_MUTEX_INITIALIZER, 0};
    size_t i;
    long busy_destroys = 0;
    enum socflow_status s;
    /* Two threads on one controller: OK or BUSY, never a wrong result. */
    for (i = 0; i < 2; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].ctl = c;
        jobs[i].calls = quick ? 300 : 20000;
        spawn(&t[i], hammer_worker, &jobs[i]);
    }
    for (i = 0; i < 2; i++) join(t[i]);
    CHECK(jobs[0].ok + jobs[1].ok > 0 && jobs[0].other + jobs[1].other == 0,
          "two threads on one controller: %ld + %ld OK, %ld + %ld busy", jobs[0].ok, jobs[1].ok,
          jobs[0].busy, jobs[1].busy);
    printf("     (one controller, two threads: %ld calls succeeded, %ld were busy)\n",
           jobs[0].ok + jobs[1].ok, jobs[0].busy + jobs[1].busy);

    /* Destroyed while two threads call it: destroy is BUSY until it wins, then the
     * threads see a closed handle. */
    for (i = 0; i < 2; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].ctl = c;
        jobs[i].stop = &stop;
        spawn(&t[i], hammer_worker, &jobs[i]);
    }
    pause_us(20000);
    while ((s = socflow_controller_destroy(c)) == SOCFLOW_ERROR_BUSY) {
        busy_destroys++;
        pause_us(10);
    }
    CHECK(s == SOCFLOW_OK, "destroying a controller in use gave %s: %s", status_name(s), last_error());
    printf("     (destroyed under two threads after %ld busy tries; they saw %ld + %ld OK, "
           "%ld + %ld busy)\n",
           busy_destroys, jobs[0].ok, jobs[1].ok, jobs[0].busy, jobs[1].busy);
    pause_us(5000);
    flag_set(&stop, 1);
    for (i = 0; i < 2; i++) join(t[i]);
    CHECK(jobs[0].other + jobs[1].other == 0, "destroy under contention");
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_controller_destroy(c));
    CHECK_OK(socflow_model_destroy(model));
}

struct model_job {
    struct socflow_model model;
    struct flag *stop;
    long ok, closed;
};

/* Uses a shared model until it is destroyed under it. */
static void *model_user(void *arg) {
    struct model_job *j = arg;
    long i;
    for (i = 0; !flag_get(j->stop); i++) {
        struct socflow_model_info info;
        struct socflow_controller c = {0};
        enum socflow_status s;
        if (i % 16 == 15) pause_us(50); /* as in hammer_worker */
        s = socflow_model_get_info(j->model, &info);
        if (s == SOCFLOW_OK) {
            j->ok++;
            s = socflow_controller_create(j->model, SOCFLOW_PRECISION_F64, &c);
            if (s == SOCFLOW_OK) {
                CHECK_OK(socflow_controller_destroy(c));
            }
        }
        if (s == SOCFLOW_ERROR_INVALID_HANDLE) {
            CHECK(c.id == 0, "a failed create leaves the null handle");
            j->closed++;
            break;
        }
        if (s != SOCFLOW_OK) {
            FAIL("a model in use gave %s: %s", status_name(s), last_error());
            break;
        }
    }
    return NULL;
}

static void test_threads_destroy_model(void) {
    struct socflow_model model = load("map.safetensors");
    struct flag stop = {PTHREAD_MUTEX_INITIALIZER, 0};
    struct model_job jobs[2];
    pthread_t t[2];
    enum socflow_status s;
    size_t i;
    for (i = 0; i < 2; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].model = model;
        jobs[i].stop = &stop;
        spawn(&t[i], model_user, &jobs[i]);
    }
    pause_us(20000);
    while ((s = socflow_model_destroy(model)) == SOCFLOW_ERROR_BUSY) pause_us(10);
    CHECK(s == SOCFLOW_OK, "destroying a model in use gave %s: %s", status_name(s), last_error());
    pause_us(5000);
    flag_set(&stop, 1);
    for (i = 0; i < 2; i++) join(t[i]);
    CHECK_ERR(SOCFLOW_ERROR_INVALID_HANDLE, socflow_model_destroy(model));
}

/* The last error belongs to its thread. */
static void *error_worker(void *arg) {
    struct socflow_model m;
    (void)arg;
    CHECK(strcmp(last_error(), "") == 0, "a new thread starts with no last error, found \"%s\"",
          last_error());
    CHECK(socflow_model_load(NULL, &m) == SOCFLOW_ERROR_NULL_POINTER, "load(NULL) fails");
    CHECK(strstr(last_error(), "path") != NULL, "the thread's own error: %s", last_error());
    return NULL;
}

static void test_last_error(void) {
    pthread_t t;
    size_t sd;
    double x[MAP_D] = {0}, u[MAP_U];
    struct socflow_model model = load("map.safetensors");
    struct socflow_controller c = make_controller(model, SOCFLOW_PRECISION_F64);
    CHECK(socflow_model_get_info(model, NULL) == SOCFLOW_ERROR_NULL_POINTER, "info(NULL) fails");
    {
        char mine[256];
        snprintf(mine, sizeof mine, "%s", last_error());
        spawn(&t, error_worker, NULL);
        join(t);
        CHECK(strcmp(last_error(), mine) == 0,
              "another thread's failure changed this thread's last error to \"%s\"", last_error());
        /* Successful calls leave it as it is. */
        CHECK_OK(socflow_controller_dims(c, &sd, &sd));
        CHECK_OK(socflow_controller_control(c, 0.5, x, MAP_D, u, MAP_U));
        CHECK(strcmp(last_error(), mine) == 0, "a successful call changed the last error");
    }
    CHECK_OK(socflow_controller_destroy(c));
    CHECK_OK(socflow_model_destroy(model));
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    size_t i;
    if (argc == 3 && strcmp(argv[2], "--quick") == 0) {
        quick = 1;
    } else if (argc != 2) {
        fprintf(stderr, "usage: %s DIR [--quick] (DIR written by ffi/tests/all/c_abi.rs)\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    /* No call has failed yet on this thread. */
    CHECK(socflow_last_error() != NULL && strcmp(socflow_last_error(), "") == 0,
          "the last error before any failure is \"%s\"", last_error());
    read_expected();

    group("version", test_version);
    group("status names", test_status_names);
    group("models", test_models);
    group("model errors", test_model_errors);
    group("handles", test_handles);
    group("controller results", test_controller_results);
    group("controller errors", test_controller_errors);
    group("simulate results", test_simulate_results);
    group("simulate errors", test_simulate_errors);
    if (!quick) group("sampler results", test_sampler_results);
    group("sampler errors", test_sampler_errors);
    group("threads: shared model", test_threads_shared_model);
    if (!quick) group("threads: shared sampler", test_threads_shared_sampler);
    group("threads: one controller", test_threads_one_controller);
    group("threads: model destroyed", test_threads_destroy_model);
    group("last error per thread", test_last_error);

    for (i = 0; i < n_arrays; i++) free(arrays[i].v);
    free(arrays);
    if (n_failures) {
        printf("test_abi: %ld of %ld checks FAILED\n", n_failures, n_checks);
        return 1;
    }
    printf("test_abi: all %ld checks passed\n", n_checks);
    return 0;
}
