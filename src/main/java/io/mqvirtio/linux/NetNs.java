package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.FunctionDescriptor;
import java.lang.invoke.MethodHandle;
import java.nio.file.Path;

/**
 * A network namespace, held open by a descriptor (namespaces(7), setns(2)). {@link #enter()} moves only the
 * calling thread: sockets and TAP devices it creates afterwards live in that namespace, and descriptors it opened
 * keep the namespace they were opened in wherever they are used from. A thread that entered a namespace should be
 * dedicated to it (or return with {@link #current()} captured beforehand), never handed back to a shared pool.
 */
public final class NetNs extends Fd {
    private static final MethodHandle SETNS =
            Native.downcall("setns", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));

    private static final int CLONE_NEWNET = 0x40000000; // <sched.h>

    /** Where {@code ip netns add NAME} pins a named namespace. */
    public static final Path NAMED_DIR = Path.of("/var/run/netns");

    private NetNs(int fd) {
        super(fd);
    }

    /** The namespace at {@code path}, e.g. {@code /var/run/netns/NAME} or {@code /proc/PID/ns/net}. */
    public static NetNs open(Path path) {
        return new NetNs(Fd.open(path.toString(), Fd.O_RDONLY));
    }

    /** A namespace created by {@code ip netns add name}. */
    public static NetNs named(String name) {
        if (name.isEmpty() || name.contains("/")) {
            throw new IllegalArgumentException("bad namespace name: \"" + name + "\"");
        }
        return open(NAMED_DIR.resolve(name));
    }

    /** The calling thread's own namespace (not the process's: a thread may have entered another). */
    public static NetNs current() {
        return open(Path.of("/proc/thread-self/ns/net"));
    }

    /** Moves the calling thread into this namespace (needs CAP_SYS_ADMIN). */
    public void enter() {
        try {
            Native.check((int) SETNS.invokeExact(Native.errnoState(), fd(), CLONE_NEWNET), "setns(CLONE_NEWNET)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
