package io.mqvirtio.bench;

import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.Font;
import java.awt.geom.Ellipse2D;
import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import org.jfree.chart.ChartUtils;
import org.jfree.chart.JFreeChart;
import org.jfree.chart.LegendItem;
import org.jfree.chart.LegendItemCollection;
import org.jfree.chart.axis.NumberAxis;
import org.jfree.chart.plot.CombinedDomainXYPlot;
import org.jfree.chart.plot.XYPlot;
import org.jfree.chart.renderer.xy.XYLineAndShapeRenderer;
import org.jfree.chart.title.TextTitle;
import org.jfree.data.xy.XYSeries;
import org.jfree.data.xy.XYSeriesCollection;

/**
 * The benchmark's PNG: throughput (Mpps) against queue pairs, one panel per frame size and ring mode stacked on a
 * shared queue-pairs axis (a panel holds only points of one mode, as a ratio compares them), one line per scenario
 * (the same colour in every panel; the reference drawn dashed).
 */
public final class BenchPlot {
    private static final Color[] COLORS = {
        new Color(0x1f77b4), new Color(0xff7f0e), new Color(0x222222), new Color(0x2ca02c), new Color(0xd62728),
        new Color(0x9467bd), new Color(0x8c564b), new Color(0x555555),
    };

    private BenchPlot() {}

    public static void write(List<Measurement> results, String subtitle, Path png) throws IOException {
        System.setProperty("java.awt.headless", "true");
        NumberAxis pairsAxis = new NumberAxis("queue pairs");
        pairsAxis.setStandardTickUnits(NumberAxis.createIntegerTickUnits());
        pairsAxis.setAutoRangeIncludesZero(false);
        pairsAxis.setLowerMargin(0.06);
        pairsAxis.setUpperMargin(0.06);
        CombinedDomainXYPlot plot = new CombinedDomainXYPlot(pairsAxis);
        plot.setGap(12);
        TreeSet<Integer> sizes = new TreeSet<>();
        TreeSet<Scenario> scenarios = new TreeSet<>();
        Set<RingMode> rings = new LinkedHashSet<>(); // in the grid's order
        for (Measurement m : results) {
            sizes.add(m.frameSize());
            rings.add(m.ringUsed());
            if (m.ok()) {
                scenarios.add(m.scenario());
            }
        }
        int panels = 0;
        for (int size : sizes) {
            for (RingMode ring : rings) {
                XYSeriesCollection data = new XYSeriesCollection();
                XYLineAndShapeRenderer r = new XYLineAndShapeRenderer(true, true);
                int k = 0;
                for (Scenario s : scenarios) {
                    XYSeries series = new XYSeries(s.title() + ", " + size + " B, " + ring.label(), true, false);
                    for (Measurement m : results) {
                        if (m.scenario() == s && m.frameSize() == size && m.ringUsed().equals(ring) && m.ok()) {
                            series.add(m.pairs(), m.mpps());
                        }
                    }
                    if (series.isEmpty()) {
                        continue;
                    }
                    data.addSeries(series);
                    style(r, k++, s);
                }
                if (k == 0 && !scenarios.isEmpty()) {
                    continue; // nothing ran in this mode at this size, something did elsewhere
                }
                plot.add(panel(data, r, size + " B, " + ring.label() + ": Mpps"), 1);
                panels++;
            }
        }
        LegendItemCollection legend = new LegendItemCollection();
        for (Scenario s : scenarios) {
            LegendItem item = new LegendItem(s.title() + (s.isReference() ? " (reference)" : ""), null, null, null,
                    new Ellipse2D.Double(-4, -4, 8, 8), color(s), stroke(s), color(s));
            legend.add(item);
        }
        plot.setFixedLegendItems(legend);
        JFreeChart chart = new JFreeChart("mqvirtio bench: throughput against queue pairs",
                new Font(Font.SANS_SERIF, Font.BOLD, 16), plot, true);
        chart.setBackgroundPaint(Color.WHITE);
        if (subtitle != null && !subtitle.isEmpty()) {
            chart.addSubtitle(new TextTitle(subtitle, new Font(Font.SANS_SERIF, Font.PLAIN, 11)));
        }
        int height = 120 + 260 * Math.max(1, panels);
        ChartUtils.saveChartAsPNG(png.toFile(), chart, 900, height);
    }

    private static XYPlot panel(XYSeriesCollection data, XYLineAndShapeRenderer r, String label) {
        NumberAxis mpps = new NumberAxis(label);
        mpps.setAutoRangeIncludesZero(true);
        mpps.setLabelFont(new Font(Font.SANS_SERIF, Font.BOLD, 13));
        XYPlot sub = new XYPlot(data, null, mpps, r);
        sub.setBackgroundPaint(Color.WHITE);
        sub.setDomainGridlinePaint(new Color(0xdddddd));
        sub.setRangeGridlinePaint(new Color(0xcccccc));
        return sub;
    }

    private static Color color(Scenario s) {
        return COLORS[(s.id() - 1) % COLORS.length];
    }

    private static BasicStroke stroke(Scenario s) {
        if (s.isReference()) {
            return new BasicStroke(2.5f, BasicStroke.CAP_BUTT, BasicStroke.JOIN_ROUND, 1f, new float[] {8f, 5f}, 0f);
        }
        return new BasicStroke(2f);
    }

    private static void style(XYLineAndShapeRenderer r, int series, Scenario s) {
        r.setSeriesPaint(series, color(s));
        r.setSeriesStroke(series, stroke(s));
        r.setSeriesShape(series, new Ellipse2D.Double(-4, -4, 8, 8));
    }
}
