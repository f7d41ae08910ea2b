// Tailwind v3 config for restic-manager.
//
// The maud views live in Rust source, so Tailwind scans `src/**/*.rs` for class
// names. Its default extractor already splits maud's `div.card.p-4` shorthand
// (the same rule it uses for Slim/Pug), and picks up `class="…"` strings.
// Class names must appear whole in the source: build them with `if` branches
// over complete names, never by gluing fragments like "pill-" + status.
//
// The built CSS (assets/app.css) is committed; rebuild it with `just css`
// (or `npm run css`) after changing a view's classes.

/** The component classes defined in assets/input.css. They are safelisted so
 *  they survive purging even before (or while) no view uses them. */
const componentClasses = [
  'btn', 'btn-primary', 'btn-danger', 'btn-amber',
  'card',
  'chip', 'update-chip',
  'pill-online', 'pill-offline',
  'pill-running', 'pill-succeeded', 'pill-failed', 'pill-pending',
  'pill-skipped', 'pill-cancelled', 'pill-queued',
  'banner-error', 'banner-info',
  'table-base',
  'tile', 'tile-amber', 'tile-value', 'tile-label',
  'input', 'label', 'link',
];

/** @type {import('tailwindcss').Config} */
module.exports = {
  content: ['./src/**/*.rs'],
  safelist: componentClasses,
  theme: {
    extend: {
      fontFamily: {
        // System font stack: no web fonts to download or embed.
        sans: [
          'system-ui', '-apple-system', '"Segoe UI"', 'Roboto', '"Helvetica Neue"',
          '"Noto Sans"', '"Liberation Sans"', 'Arial', 'sans-serif',
          '"Apple Color Emoji"', '"Segoe UI Emoji"', '"Segoe UI Symbol"', '"Noto Color Emoji"',
        ],
        mono: [
          'ui-monospace', 'SFMono-Regular', 'Menlo', 'Monaco', 'Consolas',
          '"Liberation Mono"', '"Courier New"', 'monospace',
        ],
      },
    },
    // Colours: Tailwind's default palette, untouched (amber is the "out of date" colour).
  },
  plugins: [],
};
