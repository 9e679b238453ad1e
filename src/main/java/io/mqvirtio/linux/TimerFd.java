package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * A periodic timer on CLOCK_MONOTONIC as a descriptor (timerfd_create(2)): readable once per period that passed, so an
 * epoll loop that sleeps without a timeout still wakes at that rate. Non-blocking and close-on-exec.
 */
public final class TimerFd extends Fd {
    private static final MethodHandle CREATE =
            Native.downcall("timerfd_create", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));
    private static final MethodHandle SETTIME = Native.downcall("timerfd_settime",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_POINTER, C_POINTER));
    private static final int CLOCK_MONOTONIC = 1, TFD_CLOEXEC = 0x80000, TFD_NONBLOCK = 0x800;

    private final MemorySegment expirations = Arena.ofAuto().allocate(8, 8);

    private TimerFd(int fd) {
        super(fd);
    }

    /** A timer that fires every {@code periodNanos} (more than 0), the first time one period from now. */
    public static TimerFd periodic(long periodNanos) {
        if (periodNanos <= 0) {
            throw new IllegalArgumentException("timer period " + periodNanos);
        }
        TimerFd t;
        try {
            t = new TimerFd(Native.check((int) CREATE.invokeExact(Native.errnoState(), CLOCK_MONOTONIC,
                    TFD_CLOEXEC | TFD_NONBLOCK), "timerfd_create"));
        } catch (Throwable e) {
            throw Native.rethrow(e);
        }
        try (Arena a = Arena.ofConfined()) {
            // struct itimerspec: it_interval {tv_sec, tv_nsec}, it_value {tv_sec, tv_nsec}
            MemorySegment spec = a.allocate(32, 8);
            long sec = periodNanos / 1_000_000_000L, nsec = periodNanos % 1_000_000_000L;
            spec.set(ValueLayout.JAVA_LONG, 0, sec);
            spec.set(ValueLayout.JAVA_LONG, 8, nsec);
            spec.set(ValueLayout.JAVA_LONG, 16, sec);
            spec.set(ValueLayout.JAVA_LONG, 24, nsec);
            Native.check((int) SETTIME.invokeExact(Native.errnoState(), t.fd(), 0, spec, MemorySegment.NULL),
                    "timerfd_settime");
        } catch (Throwable e) {
            t.close();
            throw Native.rethrow(e);
        }
        return t;
    }

    /** The periods that passed since the last call (0 if none): reading clears them. Never waits. */
    public long drain() {
        return read(expirations) == 8 ? expirations.get(ValueLayout.JAVA_LONG, 0) : 0;
    }
}
