package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A worker that cannot be stopped: its port hangs in a system call nobody will complete (here a write into a full
 * socket whose reader never reads, as a backend on a hung host facility would). The device is declared dead: the
 * control thread gives up after its timeout, the session ends without unmapping the guest's memory or closing the
 * descriptors the worker may still use, the socket turns new frontends away with the reason, and another device in
 * the same process serves on. Nothing crashes.
 */
@Timeout(90)
class DeadDeviceTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    /** A backend whose one port sends by writing into {@code sink} (blocking). */
    static final class HangingBackend extends OnePortBackend {
        private final UnixSocket sink;

        HangingBackend(UnixSocket sink) {
            super("hanging");
            this.sink = sink;
        }

        @Override
        public Port open(int pair) {
            return new Port() {
                @Override
                public int readFd() {
                    return NEVER;
                }

                @Override
                public long send(IoVec frame) {
                    return IoVec.writev(sink, frame);
                }

                @Override
                public long receive(IoVec into) {
                    return -1;
                }

                @Override
                public void close() {}
            };
        }

    }

    static long mappingsOf(String memfd) throws IOException {
        return Files.readAllLines(Path.of("/proc/self/maps")).stream().filter(l -> l.contains("/memfd:" + memfd + " ")).count();
    }

    @Test
    void aWorkerThatDoesNotAnswerMakesOnlyItsOwnDeviceDead() throws Exception {
        try (UnixSocket.Pair pipe = UnixSocket.pair(); Arena a = Arena.ofConfined()) {
            // fill the sink, then make it blocking: the next write waits until someone reads the other end
            MemorySegment chunk = a.allocate(65536);
            pipe.first().setNonBlocking(true);
            IoVec v = new IoVec(1);
            do {
                v.clear();
                v.add(chunk);
            } while (IoVec.writev(pipe.first(), v) > 0);
            pipe.first().setNonBlocking(false);

            NetDevice victim = new NetDevice(NetDevice.Config.of("victim", 1), new HangingBackend(pipe.first()), 1_000_000_000L);
            NetDevice bystander = new NetDevice(NetDevice.Config.of("bystander", 1), new LoopbackBackend(1, 1500));
            VhostUserServer vs = VhostUserServer.listen(dir.resolve("victim.sock"), victim);
            VhostUserServer bs = VhostUserServer.listen(dir.resolve("bystander.sock"), bystander);
            try {
                EvilDriver d = new EvilDriver(vs.path(), 1, 64, FEATURES, 1 << 20);
                HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, 1), 0);
                Thread.sleep(300); // the worker is in its port's write now, for good
                assertThatThrownBy(() -> d.fe.getVringBase(1)).isInstanceOf(VhostUserException.class);
                HostileDriverTest.await(() -> victim.deadReason() != null, "the device to be declared dead");
                assertThat(victim.deadReason()).contains("victim-qp0");
                HostileDriverTest.await(() -> !vs.hasSession(), "the session to end");
                d.close();
                assertThat(mappingsOf("evil-driver")).as("the guest memory the stuck worker may touch stays mapped")
                        .isEqualTo(1);
                // the socket turns frontends away, the other device serves
                assertThatThrownBy(() -> NetDriver.connect(vs.path(), NetDriver.Options.pairs(1)))
                        .isInstanceOf(VhostUserException.class);
                HostileDriverTest.assertEchoes(bs.path(), 1, 0);
            } finally {
                // let the port's write finish so the worker can end with the test
                pipe.second().setNonBlocking(true);
                MemorySegment sink = a.allocate(65536);
                while (pipe.second().read(sink) > 0) {
                    // drain
                }
                vs.close();
                victim.close();
                bs.close();
                bystander.close();
            }
        }
    }
}
