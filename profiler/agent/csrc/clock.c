/* The callbacks' clock (accel.h, now_ns): CLOCK_MONOTONIC, read through the CPU's
 * time-stamp counter where that is safe.
 *
 * A callback reads the clock once or twice, and on these VMs clock_gettime costs ~20-25 ns
 * (the vDSO orders its TSC read with a fence, then scales it): ~5 % of the worst-case
 * workload's time. Where the kernel's own clocksource is the TSC (it checked the counter is
 * invariant and in step across CPUs), now_ns reads the counter unordered and maps it to
 * CLOCK_MONOTONIC with a line fitted here, so the times stay comparable with Python's
 * time.perf_counter_ns().
 *
 * The sender thread calls clock_tick every tick (~50 ms), with the GIL held like every
 * reader. The first 100 ms give the line's slope; from then on each tick moves the line's
 * base to where it reads now (never a jump) and steers its slope so that what is left of
 * the error against CLOCK_MONOTONIC (NTP's slewing, the fit's own) is gone within half a
 * second. An error above 1 ms (a VM moved to another host, a counter the kernel stopped
 * trusting), or a counter that went back, switches it off for good: clock_gettime from
 * then on.
 */
#include "accel.h"

#define FIT_NS 100000000LL    /* the slope is measured over at least this much */
#define REFIT_NS 5000000000LL /* and over at most this much: NTP may change the rate */
#define STEER_NS 500000000LL  /* the error is steered away over this long */
#define MAX_ERROR_NS 1000000LL

AI_INTERNAL TscClock ai_clock;

static struct {
    int allowed, fitted;
    uint64_t anchor_tsc; /* where the slope is measured from */
    int64_t anchor_ns;
    uint64_t rate; /* ns per tick, 32.32, measured */
} fit;

#if AI_HAVE_TSC
/* A (TSC, CLOCK_MONOTONIC) pair read as close together as three tries allow. */
static void
read_pair(uint64_t *tsc, int64_t *ns)
{
    uint64_t best = UINT64_MAX;
    *tsc = 0;
    *ns = 0;
    for (int i = 0; i < 3; i++) {
        _mm_lfence();
        uint64_t before = __rdtsc();
        int64_t t = mono_ns();
        _mm_lfence();
        uint64_t after = __rdtsc();
        if (after - before < best) {
            best = after - before;
            *tsc = before + (after - before) / 2;
            *ns = t;
        }
    }
}

static void
distrust(void)
{
    ai_clock.enabled = 0;
    fit.allowed = 0;
}

static void
tick(void)
{
    uint64_t tsc;
    int64_t ns;
    read_pair(&tsc, &ns);
    if (fit.anchor_ns == 0) { /* the first tick since clock_allow */
        fit.anchor_tsc = tsc;
        fit.anchor_ns = ns;
        return;
    }
    int64_t measured = ns - fit.anchor_ns;
    if (measured >= FIT_NS) {
        if (tsc <= fit.anchor_tsc) { /* the counter went back: not one to trust */
            distrust();
            return;
        }
        fit.rate = (uint64_t)(((unsigned __int128)measured << 32) / (tsc - fit.anchor_tsc));
        fit.fitted = 1;
        if (measured >= REFIT_NS) {
            fit.anchor_tsc = tsc;
            fit.anchor_ns = ns;
        }
    }
    if (!fit.fitted) {
        return;
    }
    if (!ai_clock.enabled) {
        ai_clock.base_tsc = tsc;
        ai_clock.base_ns = ns;
        ai_clock.mult = fit.rate;
        ai_clock.enabled = 1;
        return;
    }
    int64_t mapped = tsc_ns(tsc);
    int64_t error = ns - mapped;
    if (error > MAX_ERROR_NS || error < -MAX_ERROR_NS) {
        distrust();
        return;
    }
    ai_clock.base_tsc = tsc;
    ai_clock.base_ns = mapped;
    ai_clock.mult = fit.rate + (uint64_t)((__int128)fit.rate * error / STEER_NS);
}
#endif

AI_INTERNAL PyObject *
clock_tick(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
#if AI_HAVE_TSC
    if (fit.allowed) {
        tick();
    }
#endif
    return PyBool_FromLong(ai_clock.enabled);
}

AI_INTERNAL PyObject *
clock_allow(PyObject *Py_UNUSED(module), PyObject *allowed)
{
    int allow = PyObject_IsTrue(allowed);
    if (allow < 0) {
        return NULL;
    }
    fit.allowed = AI_HAVE_TSC && allow;
    ai_clock.enabled = 0; /* clock_gettime until a slope is fitted */
    fit.fitted = 0;
    fit.anchor_ns = 0;
    return PyBool_FromLong(fit.allowed);
}
