package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;
import static io.mqvirtio.linux.Native.SIZE_T;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.util.BitSet;

/**
 * CPU affinity of the calling thread (sched_setaffinity(2)): pinning a queue-pair worker next to its TAP queue's
 * interrupts, or away from the guest's vCPUs. Only the calling thread is affected (pid 0 means "this thread").
 */
public final class Affinity {
    private static final MethodHandle SCHED_SETAFFINITY = Native.downcall("sched_setaffinity",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, SIZE_T, C_POINTER));
    private static final MethodHandle SCHED_GETAFFINITY = Native.downcall("sched_getaffinity",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, SIZE_T, C_POINTER));
    private static final MethodHandle GETTID = Native.downcall("gettid", FunctionDescriptor.of(C_INT, C_POINTER));
    private static final MethodHandle SYSCONF =
            Native.downcall("sysconf", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT));

    /** glibc's cpu_set_t (<bits/cpu-set.h>): __CPU_SETSIZE = 1024 bits as unsigned longs, 128 bytes. */
    public static final int MAX_CPUS = 1024;
    private static final long CPU_SET_SIZE = MAX_CPUS / 8;
    private static final int SC_NPROCESSORS_ONLN = 84; // <bits/confname.h>

    private Affinity() {}

    /** Pins the calling thread to one CPU. */
    public static void pin(int cpu) {
        BitSet s = new BitSet();
        s.set(cpu);
        set(s);
    }

    /** Lets the calling thread run on exactly {@code cpus}; EINVAL if none of them is usable here. */
    public static void set(BitSet cpus) {
        if (cpus.isEmpty() || cpus.length() > MAX_CPUS) {
            throw new IllegalArgumentException("CPU set must be non-empty and below " + MAX_CPUS + ": " + cpus);
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment mask = a.allocate(CPU_SET_SIZE, 8);
            long[] words = cpus.toLongArray(); // bit i of word j is CPU 64j+i, as in cpu_set_t on little-endian
            MemorySegment.copy(words, 0, mask, C_LONG, 0, words.length);
            Native.check((int) SCHED_SETAFFINITY.invokeExact(Native.errnoState(), 0, CPU_SET_SIZE, mask),
                    "sched_setaffinity");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** The CPUs the calling thread may run on. */
    public static BitSet get() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment mask = a.allocate(CPU_SET_SIZE, 8);
            Native.check((int) SCHED_GETAFFINITY.invokeExact(Native.errnoState(), 0, CPU_SET_SIZE, mask),
                    "sched_getaffinity");
            return BitSet.valueOf(mask.toArray(C_LONG));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** The calling thread's kernel thread id (what top -H and /proc/PID/task show). */
    public static int gettid() {
        try {
            return (int) GETTID.invokeExact(Native.errnoState());
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** CPUs currently online (may exceed what this thread is allowed: see {@link #get()}). */
    public static int onlineCpus() {
        try {
            return (int) Native.check((long) SYSCONF.invokeExact(Native.errnoState(), SC_NPROCESSORS_ONLN),
                    "sysconf(_SC_NPROCESSORS_ONLN)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
