// The dashboard JSON model as Grafana types it, for validate.mjs to check a dashboard file against.
//
// The dashboard, panel, row, grid and field-config shapes, and each panel plugin's options, come
// from @grafana/schema at the exact Grafana version docker-compose.yml pins (its TypeScript types
// are generated from Grafana's CUE schemas). @grafana/schema leaves a panel's `targets` untyped,
// so the Prometheus and Pyroscope query models come from the Grafana Foundation SDK, which is
// generated from the same data source schemas. Nothing here is written by hand but the plumbing
// that puts those types together.

import type { Dashboard, FieldConfig, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';
import type * as barchart from '@grafana/schema/dist/esm/raw/composable/barchart/panelcfg/x/BarChartPanelCfg_types.gen';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as gauge from '@grafana/schema/dist/esm/raw/composable/gauge/panelcfg/x/GaugePanelCfg_types.gen';
import type * as heatmap from '@grafana/schema/dist/esm/raw/composable/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen';
import type * as histogram from '@grafana/schema/dist/esm/raw/composable/histogram/panelcfg/x/HistogramPanelCfg_types.gen';
import type * as logs from '@grafana/schema/dist/esm/raw/composable/logs/panelcfg/x/LogsPanelCfg_types.gen';
import type * as piechart from '@grafana/schema/dist/esm/raw/composable/piechart/panelcfg/x/PieChartPanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as statetimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as text from '@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Dataquery as PrometheusQuery } from '@grafana/grafana-foundation-sdk/prometheus';
import type { dataquery as PyroscopeQuery } from '@grafana/grafana-foundation-sdk/grafanapyroscope';

/** What a JSON file can hold of `T`: string enums as their values, and no methods. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends readonly (infer Item)[]
      ? Json<Item>[]
      : T extends object
        ? { [K in keyof T as T[K] extends (...args: never[]) => unknown ? never : K]: Json<T[K]> }
        : T;

/** A query of one of the data sources the stack provisions. */
export type Query = Json<PrometheusQuery> | Json<PyroscopeQuery>;

type Untyped = Record<string, unknown>;

/** Field config whose `custom` block is the panel plugin's own (`FieldConfig` lets any key in). */
type FieldConfigOf<Custom> = Omit<FieldConfigSource, 'defaults'> & {
  defaults: Omit<FieldConfig, 'custom'> & { custom?: Custom };
};

/** A panel of one plugin: its options and field config typed by that plugin's schema. */
type PluginPanel<Type extends string, Options, Custom = Untyped> = Omit<
  Json<Panel>,
  'type' | 'options' | 'fieldConfig' | 'targets'
> & {
  type: Type;
  options?: Json<Options>;
  fieldConfig?: Json<FieldConfigOf<Custom>>;
  targets?: Query[];
};

export type AnyPanel =
  | (Omit<Json<RowPanel>, 'panels'> & { panels: AnyPanel[] })
  | PluginPanel<'timeseries', timeseries.Options, timeseries.FieldConfig>
  | PluginPanel<'barchart', barchart.Options, barchart.FieldConfig>
  | PluginPanel<'bargauge', bargauge.Options>
  | PluginPanel<'gauge', gauge.Options>
  | PluginPanel<'heatmap', heatmap.Options, heatmap.FieldConfig>
  | PluginPanel<'histogram', histogram.Options, histogram.FieldConfig>
  | PluginPanel<'logs', logs.Options>
  | PluginPanel<'piechart', piechart.Options, piechart.FieldConfig>
  | PluginPanel<'stat', stat.Options>
  | PluginPanel<'state-timeline', statetimeline.Options, statetimeline.FieldConfig>
  | PluginPanel<'table', table.Options, table.FieldConfig>
  | PluginPanel<'text', text.Options>
  // The flame graph panel publishes no options schema; its queries and layout are still typed.
  | PluginPanel<'flamegraph', Untyped>;

export type GrafanaDashboard = Omit<Json<Dashboard>, 'panels'> & { panels?: AnyPanel[] };
