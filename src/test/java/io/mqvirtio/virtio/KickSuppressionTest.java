package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * What the device writes to ask for kicks or none (VIRTIO 1.3, 2.7.10 and 2.8.10), without EVENT_IDX: "no kicks" is
 * written when kicks were on (or nothing was written yet), and not again at every polling burst; asking for kicks
 * always writes, and a later "no kicks" writes again.
 */
class KickSuppressionTest {
    static final int SIZE = 16;
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final short JUNK = 0x5a5a;

    TwoViewMemory mem;
    MemorySegment d;

    @BeforeEach
    void setUp() {
        mem = new TwoViewMemory(1 << 20);
        d = mem.driver();
    }

    @AfterEach
    void tearDown() {
        mem.close();
    }

    @ParameterizedTest(name = "packed={0}")
    @ValueSource(booleans = {false, true})
    void noKicksIsWrittenOnceUntilKicksAreAskedFor(boolean packed) {
        long f = packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0;
        Rings.Layout layout = Rings.layout(SIZE, f);
        long base = mem.alloc(layout.totalBytes(), 4096);
        DeviceRing q = Rings.device(mem.guest, SIZE, mem.uva(base + layout.descOffset()),
                mem.uva(base + layout.availOffset()), mem.uva(base + layout.usedOffset()), f,
                packed ? RingBase.PACKED_START : RingBase.split(0, 0));
        // packed: the device event area's flags; split: used->flags (both the used area's first two bytes)
        long flags = base + layout.usedOffset() + (packed ? 2 : 0);
        int off = packed ? PackedRing.EVENT_DISABLE : 1; // VIRTQ_USED_F_NO_NOTIFY
        int on = packed ? PackedRing.EVENT_ENABLE : 0;

        q.disableKicks();
        assertThat(d.get(U16, flags)).as("the first 'no kicks'").isEqualTo((short) off);
        d.set(U16, flags, JUNK); // a value the ring did not write: shows whether it writes again
        q.disableKicks();
        q.disableKicks();
        assertThat(d.get(U16, flags)).as("'no kicks' again, with kicks already off: nothing written").isEqualTo(JUNK);

        assertThat(q.enableKicks()).as("nothing available").isFalse();
        assertThat(d.get(U16, flags)).as("kicks asked for").isEqualTo((short) on);
        q.disableKicks();
        assertThat(d.get(U16, flags)).as("'no kicks' after kicks were on").isEqualTo((short) off);

        d.set(U16, flags, JUNK);
        assertThat(q.enableKicksForMore()).isFalse();
        assertThat(d.get(U16, flags)).as("kicks asked for beyond what was seen").isEqualTo((short) on);
        q.disableKicks();
        assertThat(d.get(U16, flags)).isEqualTo((short) off);
    }
}
