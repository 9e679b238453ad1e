package io.mqvirtio.linux;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** This process's RLIMIT_NOFILE (getrlimit(2), setrlimit(2)), for tests that run it out of descriptors. */
public final class NoFileLimit {
    private static final int RLIMIT_NOFILE = 7;

    private NoFileLimit() {}

    /** {soft, hard}. */
    public static long[] get() throws Throwable {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment rl = a.allocate(16, 8);
            Native.check((int) Native.downcall("getrlimit", FunctionDescriptor.of(Native.C_INT, Native.C_POINTER,
                    Native.C_INT, Native.C_POINTER)).invokeExact(Native.errnoState(), RLIMIT_NOFILE, rl), "getrlimit");
            return new long[] {rl.get(ValueLayout.JAVA_LONG, 0), rl.get(ValueLayout.JAVA_LONG, 8)};
        }
    }

    public static void set(long soft, long hard) throws Throwable {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment rl = a.allocate(16, 8);
            rl.set(ValueLayout.JAVA_LONG, 0, soft);
            rl.set(ValueLayout.JAVA_LONG, 8, hard);
            Native.check((int) Native.downcall("setrlimit", FunctionDescriptor.of(Native.C_INT, Native.C_POINTER,
                    Native.C_INT, Native.C_POINTER)).invokeExact(Native.errnoState(), RLIMIT_NOFILE, rl), "setrlimit");
        }
    }
}
