package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.await;
import static io.mqvirtio.virtio.SplitRing.DESC_F_WRITE;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.nio.file.Path;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A host that floods the guest's queue with frames it can never take (larger than the device's MTU, as a TAP whose
 * MTU the host raised hands them, cut, with their whole length). Each is dropped and counted, and each counts
 * against the round's RX budget as a delivered frame does: the worker once read dropped frames for as long as the
 * host kept them coming, its TX ring starved and its commands unanswered (after 10 s the device is declared dead).
 * Through the RX burst (buffers an MTU-sized frame fits) and chain by chain (smaller, mergeable ones).
 */
@Timeout(60)
class RxDropBudgetTest {
    @TempDir
    Path dir;

    /** A port whose host always has one more oversized frame while {@link #flooding}. */
    static final class Flood extends OnePortBackend {
        volatile boolean flooding = true;

        Flood() {
            super("flood");
        }

        @Override
        public Port open(int pair) {
            return new Port() {
                @Override
                public int readFd() {
                    return POLL;
                }

                @Override
                public long send(IoVec frame) {
                    return frame.totalBytes();
                }

                @Override
                public long receive(IoVec into) {
                    // what a TAP says of a 9000-byte frame it cut to the buffers: the frame's whole length
                    return flooding ? VirtioNet.HDR_SIZE + 9000 : -1;
                }

                @Override
                public void close() {}
            };
        }

    }

    @ParameterizedTest(name = "buffer={0} mrg={1}")
    @CsvSource({"2048,false", "1024,true", "1024,false"})
    void oversizedFramesCountAgainstTheBudgetAndTxGoesOn(int bufSize, boolean mrg) throws Exception {
        Flood backend = new Flood();
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
                | (mrg ? VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF) : 0);
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("flood", 1), backend);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("f.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, 64, features, 1 << 20)) {
            try {
                EvilDriver.Ring rx = d.rx(0);
                for (int i = 0; i < 64; i++) {
                    rx.desc(i, d.gpa(d.alloc(bufSize)), bufSize, DESC_F_WRITE, 0);
                    rx.offer(i);
                }
                rx.kick();
                Thread.sleep(100); // the flood is on
                for (int i = 0; i < 3; i++) {
                    int want = i + 1;
                    HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, i), i);
                    await(() -> d.tx(0).usedIdx() == want, "a TX frame used during the flood");
                }
                await(() -> dev.counters().get(0).drops() > 1000, "the flood's frames dropped and counted");
                assertThat(dev.counters().get(1).packets()).isEqualTo(3);
                assertThat(rx.usedIdx()).as("nothing cut reached the guest").isZero();
                assertThat(dev.counters().get(0).errors()).isZero();
            } finally {
                backend.flooding = false; // lets a worker stuck in the flood go, so that the device closes
            }
        }
    }
}
