package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.await;
import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.HostTap;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLong;
import java.util.stream.Stream;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Signals the process handles (serve's SIGHUP, SIGTERM while it stops) land on whichever thread the kernel picks, a
 * worker in the middle of its TAP writes among them: a system call that waits returns EINTR then. Here the test's JVM
 * handles SIGHUP as serve does, and the worker of a pair sending through io_uring gets thousands of them (tgkill)
 * while the guest's frames go out, with the writes linked (a TAP whose send buffer the host limited: the completions
 * come from task work the worker waits for) and not. Every frame must go out, none dropped, and the queue must still
 * use io_uring: an io_uring_enter that only waits (nothing to submit) and is interrupted answers EINTR, which would
 * fail the batch and turn the queue's io_uring off. (Not seen to happen before the retry: the kernel completes these
 * writes inline, and a wait interrupted after a submission returns the count submitted. Half a million signals a
 * second slow the worker a hundredfold, which is what a local user who may signal the daemon can do to it.)
 */
@Timeout(60)
class TapSignalTest {
    private static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);
    private static final int SIGHUP = 1;

    @TempDir
    Path dir;

    @ParameterizedTest(name = "linked writes: {0}")
    @ValueSource(booleans = {true, false})
    void signalsOnTheWorkerCostNoFrameAndKeepIoUring(boolean linked) throws Throwable {
        assumeTrue(TestNetns.isRoot() && IoUring.unavailable() == null, "needs root and io_uring");
        String id = Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        String tap = "mqvg" + id;
        String name = "sig" + id;
        handleHangup();
        try (TestNetns ns = TestNetns.create()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.IO_URING));
            try (Tap hostQueue = ns.inside(() -> Tap.openQueue(tap, true))) {
                ns.ip("link", "set", tap, "up"); // the kernel takes each frame and drops it (an unknown ethertype)
                hostQueue.detach();
                if (linked) {
                    HostTap.setSendBuffer(hostQueue, 4 << 20); // limited, with room: the writer links its writes
                }
                try (NetDevice dev = new NetDevice(NetDevice.Config.of(name, 1), backend);
                     VhostUserServer server = VhostUserServer.listen(dir.resolve("s.sock"), dev);
                     EvilDriver d = new EvilDriver(server.path(), 1, 256, FEATURES, 1 << 20)) {
                    EvilDriver.Ring tx = d.tx(0);
                    byte[] f = HostileDriverTest.frame(200, 1);
                    long off = HostileDriverTest.sendValid(d, 0, f, 0);
                    await(() -> dev.counters().get(1).packets() == 1, "the first frame sent");
                    int worker = tid(name + "-qp0");

                    AtomicLong signals = new AtomicLong();
                    Thread signaller = Thread.ofPlatform().daemon().start(() -> {
                        while (!Thread.currentThread().isInterrupted()) {
                            tgkill(worker, SIGHUP);
                            signals.incrementAndGet();
                            Thread.onSpinWait();
                        }
                    });
                    int sent = 1;
                    try {
                        long end = System.nanoTime() + 1_000_000_000L;
                        while (System.nanoTime() < end) {
                            int at = tx.usedIdx();
                            for (int i = 0; i < 32; i++) {
                                tx.desc(i, d.gpa(off), 12 + f.length, 0, 0);
                                tx.offer(i);
                            }
                            tx.kick();
                            sent += 32;
                            await(() -> tx.usedIdx() == ((at + 32) & 0xffff), "a burst used");
                        }
                    } finally {
                        signaller.interrupt();
                        signaller.join(5000);
                    }
                    int total = sent;
                    await(() -> dev.counters().get(1).packets() + dev.counters().get(1).errors()
                            + dev.counters().get(1).drops() == total, "every frame counted");
                    QueueCounters.Snapshot c = dev.counters().get(1);
                    assertThat(signals.get()).as("signals sent to the worker").isGreaterThan(1000);
                    assertThat(c.errors() + c.drops()).as("frames lost among %d, with %d signals", total, signals.get())
                            .isZero();
                    assertThat(c.packets()).isEqualTo(total);
                    assertThat(dev.ioMethods()).as("the queue's TX method").containsExactly("readv", "io_uring");
                    assertThat(tx.err.drain()).as("no ring broke").isZero();
                }
            } finally {
                backend.close();
            }
        }
    }

    /** The native thread id of this process's thread named {@code comm} (as the kernel keeps it: 15 characters). */
    private static int tid(String comm) throws Exception {
        String want = comm.length() > 15 ? comm.substring(0, 15) : comm;
        try (Stream<Path> tasks = Files.list(Path.of("/proc/self/task"))) {
            return tasks.filter(t -> {
                try {
                    return Files.readString(t.resolve("comm")).strip().equals(want);
                } catch (Exception e) {
                    return false;
                }
            }).mapToInt(t -> Integer.parseInt(t.getFileName().toString())).findFirst()
                    .orElseThrow(() -> new AssertionError("no thread named " + want));
        }
    }

    private static final MethodHandle TGKILL = Linker.nativeLinker().downcallHandle(
            Linker.nativeLinker().defaultLookup().find("tgkill").orElseThrow(),
            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT));

    private static void tgkill(int tid, int sig) {
        try {
            int r = (int) TGKILL.invokeExact((int) ProcessHandle.current().pid(), tid, sig);
            if (r != 0) {
                throw new IllegalStateException("tgkill failed");
            }
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /**
     * SIGHUP handled in this JVM as serve handles it (nothing done), for good: the JVM's default would end the test run,
     * and a signal sent before a restore may be dispatched after it (the JVM looks up the handler then).
     */
    private static void handleHangup() throws Exception {
        Class<?> signal = Class.forName("sun.misc.Signal");
        Class<?> handlerType = Class.forName("sun.misc.SignalHandler");
        Object h = Proxy.newProxyInstance(TapSignalTest.class.getClassLoader(), new Class<?>[] {handlerType},
                (proxy, m, args) -> switch (m.getName()) {
                    case "hashCode" -> System.identityHashCode(proxy);
                    case "equals" -> proxy == args[0];
                    case "toString" -> "TapSignalTest's SIGHUP handler";
                    default -> null;
                });
        Method handle = signal.getMethod("handle", signal, handlerType);
        handle.invoke(null, signal.getConstructor(String.class).newInstance("HUP"), h);
    }
}
