package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.BASIC_PF;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.memory.MemoryBudget;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Guest memory a frontend may make us map: a sparse memfd of 15 TiB costs the frontend nothing and used to cost us
 * 15 TiB of address space per region (seven took the backend to 105 TiB). Each VM has a limit and all VMs of a
 * process share a total; a table beyond either is refused with a clear error before anything is mapped.
 */
@Timeout(60)
class MemoryLimitTest {
    static final long GIB = 1L << 30;

    @TempDir
    Path dir;

    /** A memfd of {@code size} bytes, sparse: nothing of it is ever touched. */
    static MemFd sparse(String name, long size) {
        return MemFd.create(name, size);
    }

    static byte[] region(long gpa, long size) {
        return RawPeer.memReg(new RawPeer.Region(gpa, size, 0x7f00_0000_0000L + gpa, 0));
    }

    @Test
    void sevenRegionsOf15TiBAreRefusedByTheDefaultLimits() throws Exception {
        RecordingDevice dev = new RecordingDevice(1);
        MemoryBudget budget = MemoryBudget.defaults(); // its own total, so the test does not depend on other tests
        long mappedBefore = Leaks.mappingsOf("huge");
        try (VhostUserServer server = VhostUserServer.listen(dir.resolve("vu.sock"), dev, new VhostUserServer.Options(null, budget));
             RawPeer fe = RawPeer.connect(server.path()); MemFd huge = sparse("huge", 15L << 40);
             LogCapture log = new LogCapture().quiet()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            for (int i = 0; i < 7; i++) {
                long ack = fe.ack(Request.ADD_MEM_REG, region(i * (16L << 40), 15L << 40), huge.fd());
                assertThat(ack).as("ADD_MEM_REG %d of 15 TiB", i).isNotZero();
            }
            assertThat(Leaks.mappingsOf("huge")).isEqualTo(mappedBefore);
            assertThat(budget.reserved()).isZero();
            assertThat(log.lines()).anySatisfy(l -> assertThat(l).contains("above its limit of").contains("--max-memory"));
            assertThat(fe.get(Request.GET_QUEUE_NUM)).isEqualTo(1); // still a working session
        }
    }

    @Test
    void aVmIsHeldToItsOwnLimit() throws Exception {
        RecordingDevice dev = new RecordingDevice(1);
        MemoryBudget budget = new MemoryBudget(2 * GIB, 100 * GIB);
        try (VhostUserServer server = VhostUserServer.listen(dir.resolve("vu.sock"), dev, new VhostUserServer.Options(null, budget));
             RawPeer fe = RawPeer.connect(server.path()); MemFd m = sparse("vm", 4 * GIB);
             LogCapture log = new LogCapture().quiet()) {
            BackendHarness.negotiate(fe, BASIC_PF);
            assertThat(fe.ack(Request.SET_MEM_TABLE, RawPeer.memTable(new RawPeer.Region(0, 3 * GIB, 0x7f00_0000_0000L, 0)),
                    m.fd())).as("a table of 3 GiB").isNotZero();
            fe.ok(Request.SET_MEM_TABLE, RawPeer.memTable(new RawPeer.Region(0, GIB, 0x7f00_0000_0000L, 0)), m.fd());
            assertThat(budget.reserved()).isEqualTo(GIB);
            fe.ok(Request.ADD_MEM_REG, region(4 * GIB, GIB), m.fd());
            assertThat(budget.reserved()).isEqualTo(2 * GIB);
            assertThat(fe.ack(Request.ADD_MEM_REG, region(8 * GIB, 4096), m.fd())).as("one page past 2 GiB").isNotZero();
            fe.ok(Request.REM_MEM_REG, region(4 * GIB, GIB));
            assertThat(budget.reserved()).isEqualTo(GIB);
            // a whole new table of the limit's size replaces the old one (the old is counted until it goes)
            fe.ok(Request.SET_MEM_TABLE, RawPeer.memTable(new RawPeer.Region(0, 2 * GIB, 0x7f00_0000_0000L, 0)), m.fd());
            assertThat(budget.reserved()).isEqualTo(2 * GIB);
        }
        awaitReserved(budget, 0);
    }

    @Test
    void allVmsShareOneTotal() throws Exception {
        MemoryBudget budget = new MemoryBudget(3 * GIB, 4 * GIB);
        RecordingDevice da = new RecordingDevice(1);
        RecordingDevice db = new RecordingDevice(1);
        try (VhostUserServer a = VhostUserServer.listen(dir.resolve("a.sock"), da, new VhostUserServer.Options(null, budget));
             VhostUserServer b = VhostUserServer.listen(dir.resolve("b.sock"), db,
                     new VhostUserServer.Options(null, budget.withPerVm(3 * GIB)));
             MemFd m = sparse("vms", 4 * GIB); LogCapture log = new LogCapture().quiet()) {
            RawPeer fa = RawPeer.connect(a.path());
            BackendHarness.negotiate(fa, BASIC_PF);
            fa.ok(Request.SET_MEM_TABLE, RawPeer.memTable(new RawPeer.Region(0, 2 * GIB, 0x7f00_0000_0000L, 0)), m.fd());
            try (RawPeer fb = RawPeer.connect(b.path())) {
                BackendHarness.negotiate(fb, BASIC_PF);
                fb.ok(Request.SET_MEM_TABLE, RawPeer.memTable(new RawPeer.Region(0, 2 * GIB, 0x7f00_0000_0000L, 0)), m.fd());
                assertThat(fb.ack(Request.ADD_MEM_REG, region(4 * GIB, GIB), m.fd())).as("past the total").isNotZero();
                assertThat(log.lines()).anySatisfy(l -> assertThat(l).contains("all VMs").contains("--max-total-memory"));
                fa.close(); // VM a goes away: its memory is unmapped and given back
                awaitReserved(budget, 2 * GIB);
                fb.ok(Request.ADD_MEM_REG, region(4 * GIB, GIB), m.fd());
                assertThat(budget.reserved()).isEqualTo(3 * GIB);
            }
        }
        awaitReserved(budget, 0);
    }

    private static void awaitReserved(MemoryBudget b, long want) throws InterruptedException {
        long deadline = System.nanoTime() + 5_000_000_000L;
        while (b.reserved() != want) {
            assertThat(System.nanoTime()).as("reserved %d, want %d", b.reserved(), want).isLessThan(deadline);
            Thread.sleep(10);
        }
    }
}
