package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.charset.StandardCharsets;

/**
 * One queue of a multiqueue TAP device: each {@link #openQueue} opens {@code /dev/net/tun} once and joins the
 * device named {@code ifName} (creating it with the first queue). A queue-pair worker reads and writes whole
 * Ethernet frames on its queue's descriptor, each preceded by a virtio-net header when {@code vnetHdr} is on.
 *
 * <p>The device is created in the network namespace of the thread that opens its first queue, and it disappears
 * when its last queue is closed unless made persistent. Opening, attaching and offload changes need CAP_NET_ADMIN
 * (or ownership of a persistent device).
 */
public final class Tap extends Fd {
    // ioctl(2) is variadic; the third argument is a pointer for most TUN requests and an unsigned long for a few.
    private static final MethodHandle IOCTL_PTR = Native.downcallVariadic("ioctl",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_LONG, C_POINTER), 2);
    private static final MethodHandle IOCTL_LONG = Native.downcallVariadic("ioctl",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_LONG, C_LONG), 2);

    /*
     * Request numbers from <linux/if_tun.h>: _IOW('T', nr, int) = 0x40045400 | nr, _IOR('T', nr, int) =
     * 0x80045400 | nr (direction << 30 | size 4 << 16 | 'T' << 8 | nr).
     */
    static final long TUNSETIFF = 0x400454caL, TUNGETIFF = 0x800454d2L, TUNSETPERSIST = 0x400454cbL,
            TUNSETOFFLOAD = 0x400454d0L, TUNGETSNDBUF = 0x800454d3L, TUNGETVNETHDRSZ = 0x800454d7L,
            TUNSETVNETHDRSZ = 0x400454d8L, TUNSETQUEUE = 0x400454d9L;

    /** ifr_flags bits for TUNSETIFF / TUNSETQUEUE, <linux/if_tun.h>. */
    public static final int IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000, IFF_MULTI_QUEUE = 0x0100,
            IFF_ATTACH_QUEUE = 0x0200, IFF_DETACH_QUEUE = 0x0400;

    /** TUNSETOFFLOAD bits, <linux/if_tun.h>: which offloaded (partial-checksum, GSO) frames we accept. */
    public static final int TUN_F_CSUM = 0x01, TUN_F_TSO4 = 0x02, TUN_F_TSO6 = 0x04, TUN_F_TSO_ECN = 0x08,
            TUN_F_UFO = 0x10;

    /** struct ifreq (netdevice(7), <net/if.h>): char ifr_name[IFNAMSIZ], then a union (short ifr_flags), 40 bytes. */
    private static final int IFREQ_SIZE = 40, IFNAMSIZ = 16, IFR_FLAGS = 16;

    private static final int POLLERR = 0x8;

    private static final String CLONE_DEVICE = "/dev/net/tun";

    private final String interfaceName;
    private final boolean vnetHdr;

    private Tap(int fd, String interfaceName, boolean vnetHdr) {
        super(fd);
        this.interfaceName = interfaceName;
        this.vnetHdr = vnetHdr;
    }

    /**
     * Opens one more queue of the multiqueue TAP {@code ifName} (at most 15 bytes; empty or with a {@code %d} to let
     * the kernel pick, as in {@code tap%d}); the queue starts attached. Every queue of a device must agree on
     * {@code vnetHdr}, or the kernel refuses with EINVAL.
     */
    public static Tap openQueue(String ifName, boolean vnetHdr) {
        byte[] name = ifName.getBytes(StandardCharsets.US_ASCII);
        if (name.length >= IFNAMSIZ || ifName.indexOf('\0') >= 0 || ifName.indexOf('/') >= 0) {
            throw new IllegalArgumentException("interface name must be at most " + (IFNAMSIZ - 1)
                    + " ASCII bytes without NUL or '/': \"" + ifName + "\"");
        }
        int fd = Fd.open(CLONE_DEVICE, Fd.O_RDWR);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ifr = a.allocate(IFREQ_SIZE, 8);
            MemorySegment.copy(name, 0, ifr, ValueLayout.JAVA_BYTE, 0, name.length);
            int flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | (vnetHdr ? IFF_VNET_HDR : 0);
            ifr.set(ValueLayout.JAVA_SHORT, IFR_FLAGS, (short) flags);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), fd, TUNSETIFF, ifr), "ioctl(TUNSETIFF)");
            // The kernel writes back the name it used (the expansion of %d, or ours).
            return new Tap(fd, ifr.getString(0, StandardCharsets.US_ASCII), vnetHdr);
        } catch (Throwable t) {
            new Fd(fd).close();
            throw Native.rethrow(t);
        }
    }

    /**
     * The device's flags (TUNGETIFF: IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE, ...). They are the device's,
     * set by whichever queue joined it first: a queue that joins a device another process holds gets its flags, not
     * the ones it asked for.
     */
    public int flags() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ifr = a.allocate(IFREQ_SIZE, 8);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), fd(), TUNGETIFF, ifr), "ioctl(TUNGETIFF)");
            return Short.toUnsignedInt(ifr.get(ValueLayout.JAVA_SHORT, IFR_FLAGS));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Whether the device this queue joined is gone (deleted: every call on the queue answers EBADFD). A poll, which
     * takes no lock of the kernel's network configuration (an ioctl takes the rtnl lock every device shares).
     */
    public boolean deviceGone() {
        return (poll(0, 0) & POLLERR) != 0;
    }

    /** The device's name, as the kernel chose it. */
    public String interfaceName() {
        return interfaceName;
    }

    /** Whether frames on this queue carry a virtio-net header (IFF_VNET_HDR). */
    public boolean vnetHdr() {
        return vnetHdr;
    }

    /** Rejoins the device: the kernel steers flows to this queue again. */
    public void attach() {
        setQueue(IFF_ATTACH_QUEUE, "ioctl(TUNSETQUEUE, IFF_ATTACH_QUEUE)");
    }

    /**
     * Leaves the device while keeping the descriptor: the kernel stops steering flows here (a disabled queue pair,
     * after the guest's {@code ethtool -L}). A detached queue polls quiet and reads as empty (EAGAIN), so it may stay
     * in an epoll set; but the kernel still accepts frames written to it and injects them, so whoever owns a
     * disabled queue must drop its TX, not write it.
     */
    public void detach() {
        setQueue(IFF_DETACH_QUEUE, "ioctl(TUNSETQUEUE, IFF_DETACH_QUEUE)");
    }

    private void setQueue(int flag, String call) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ifr = a.allocate(IFREQ_SIZE, 8);
            ifr.set(ValueLayout.JAVA_SHORT, IFR_FLAGS, (short) flag);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), fd(), TUNSETQUEUE, ifr), call);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Sets the virtio-net header length: 12 for {@code virtio_net_hdr_v1} (VIRTIO_F_VERSION_1 or MRG_RXBUF), 10 for
     * the legacy header. The setting belongs to the device, shared by all its queues. On frames the kernel sends,
     * only the first 10 bytes are defined: older kernels skip the rest (leaving {@code num_buffers} as it was in the
     * buffer), newer ones zero it, so the device writes {@code num_buffers} itself.
     */
    public void setVnetHdrSize(int size) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocateFrom(ValueLayout.JAVA_INT, size);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), fd(), TUNSETVNETHDRSZ, v),
                    "ioctl(TUNSETVNETHDRSZ)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * The queue's send buffer (TUNGETSNDBUF): Integer.MAX_VALUE, the TAP's own, unless a host limited it
     * (TUNSETSNDBUF, QEMU's {@code sndbuf=}); only with a limit does a write find no room (EAGAIN). Takes the kernel's
     * rtnl lock, as every TAP ioctl does: not for a fast path. EBADFD on a detached queue.
     */
    public int sendBuffer() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(ValueLayout.JAVA_INT);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), fd(), TUNGETSNDBUF, v),
                    "ioctl(TUNGETSNDBUF)");
            return v.get(ValueLayout.JAVA_INT, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public int vnetHdrSize() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(ValueLayout.JAVA_INT);
            Native.check((int) IOCTL_PTR.invokeExact(Native.errnoState(), fd(), TUNGETVNETHDRSZ, v),
                    "ioctl(TUNGETVNETHDRSZ)");
            return v.get(ValueLayout.JAVA_INT, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Tells the kernel which offloads our side accepts ({@code TUN_F_*}): with TUN_F_CSUM it may send frames with a
     * partial checksum (NEEDS_CSUM in the header), with TSO4/6 unsegmented GSO frames. Passed by value.
     */
    public void setOffload(int flags) {
        ioctlValue(TUNSETOFFLOAD, Integer.toUnsignedLong(flags), "ioctl(TUNSETOFFLOAD)");
    }

    /**
     * Makes the device outlive its queues (true), so it can be configured before and survive a restart of ours,
     * or lets it vanish with its last queue (false).
     */
    public void setPersist(boolean persist) {
        ioctlValue(TUNSETPERSIST, persist ? 1 : 0, "ioctl(TUNSETPERSIST)");
    }

    private void ioctlValue(long request, long value, String call) {
        try {
            Native.check((int) IOCTL_LONG.invokeExact(Native.errnoState(), fd(), request, value), call);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    @Override
    public String toString() {
        return "Tap[" + interfaceName + ", fd=" + (isOpen() ? fd() : -1) + "]";
    }
}
