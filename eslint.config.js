// ESLint (flat config): the recommended JavaScript and typescript-eslint rules, plus the type-aware rules that catch
// what tsc does not: a promise nobody awaits or handles, a promise passed where a callback's result is ignored.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'release/', 'node_modules/', 'bench/', 'coverage/', '.tap/'] },
  js.configs.recommended,
  { languageOptions: { globals: globals.node } },
  tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: {
      // tsconfig.lint.json adds test/ to what tsconfig.json compiles, so tests get the type-aware rules too.
      parserOptions: { project: './tsconfig.lint.json', tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // tap queues `t.test(...)` and awaits it itself; its promise is only there for those who want to wait.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafePromises: [{ from: 'package', package: '@tapjs/core', name: 'PromiseWithSubtest' }] },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      // Terminal and log sanitising strips control characters on purpose.
      'no-control-regex': 'off',
      // `_` marks a parameter kept for its position in a signature.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
);
