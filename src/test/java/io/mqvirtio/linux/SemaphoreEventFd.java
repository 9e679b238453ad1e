package io.mqvirtio.linux;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/** Eventfds in semaphore mode (EFD_SEMAPHORE: each read takes one), as a hostile frontend may make its kicks. */
public final class SemaphoreEventFd {
    private static final MethodHandle EVENTFD = Linker.nativeLinker().downcallHandle(
            Linker.nativeLinker().defaultLookup().find("eventfd").orElseThrow(),
            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT));
    private static final int EFD_SEMAPHORE = 1, EFD_NONBLOCK = 0x800, EFD_CLOEXEC = 0x80000;

    private SemaphoreEventFd() {}

    /** A non-blocking semaphore eventfd whose counter holds {@code count}. */
    public static EventFd create(long count) {
        int fd;
        try {
            fd = (int) EVENTFD.invokeExact(0, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
        if (fd < 0) {
            throw new IllegalStateException("eventfd(EFD_SEMAPHORE) failed");
        }
        EventFd e = EventFd.adopt(fd);
        if (count > 0) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment v = a.allocate(ValueLayout.JAVA_LONG);
                v.set(ValueLayout.JAVA_LONG, 0, count);
                if (e.write(v) != 8) {
                    e.close();
                    throw new IllegalStateException("cannot fill the semaphore eventfd");
                }
            }
        }
        return e;
    }
}
