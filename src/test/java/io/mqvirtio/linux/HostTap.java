package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/** What another process on the host can do to a TAP device through a queue of its own, for hostile-host tests. */
public final class HostTap {
    private static final MethodHandle IOCTL_PTR = Native.downcallVariadic("ioctl",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_LONG, C_POINTER), 2);
    /** _IOW('T', 212, int), <linux/if_tun.h>. */
    private static final long TUNSETSNDBUF = 0x400454d4L;

    private HostTap() {}

    /**
     * TUNSETSNDBUF: the device's send buffer, which the kernel applies to every attached queue (QEMU's {@code
     * sndbuf=}): a write that finds its queue's frames in flight holding that much answers EAGAIN.
     */
    public static void setSendBuffer(Tap queue, int bytes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocateFrom(ValueLayout.JAVA_INT, bytes);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), queue.fd(), TUNSETSNDBUF, v),
                    "ioctl(TUNSETSNDBUF)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
