"""Screenshots of MLflow's UI for the README: the runs table grouped by family with depth and top-1 columns, one
run's system metrics, a sweep parent's artifacts.

    docs/screenshots/make_store.sh /tmp/shots                                   # the runs to look at
    mlflow ui --backend-store-uri sqlite:////tmp/shots/mlflow.db --port 5055 &
    python docs/screenshots/shoot.py --url http://127.0.0.1:5055 --out docs/screenshots

Needs Playwright (``pip install playwright``, in any environment) and Debian's Chromium (``apt-get install
chromium``); not part of the test suite. Talks to the server only over HTTP (REST for the run ids).
"""
import argparse
import json
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run']
ML = 'workflowType=machine_learning'  # the UI's "Model training" mode (its default mode is GenAI)


def rest(url, path, body):
    req = urllib.request.Request(f'{url}/api/2.0/mlflow/{path}', data=json.dumps(body).encode(),
                                 headers={'Content-Type': 'application/json'})
    return json.load(urllib.request.urlopen(req))


def experiment_id(url, name):
    req = urllib.request.urlopen(f'{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}')
    return json.load(req)['experiment']['experiment_id']


def runs(url, exp_id, filter_string):
    return rest(url, 'runs/search', {'experiment_ids': [exp_id], 'filter': filter_string})['runs']


def close_assistant(page):
    """Close the MLflow Assistant side panel (its Close button, top right) so the page gets the width."""
    for button in page.get_by_role('button', name='Close').all():
        box = button.bounding_box()
        if box and box['y'] < 80 and box['x'] > 1200:
            button.click()
            page.wait_for_timeout(500)
            return


def pick(page, button, option):
    page.get_by_role('button', name=button).click()
    page.wait_for_timeout(800)
    page.get_by_role('menu').get_by_text(option, exact=True).first.click()
    page.wait_for_timeout(800)
    page.keyboard.press('Escape')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--url', default='http://127.0.0.1:5055')
    ap.add_argument('--out', type=Path, default=Path('docs/screenshots'))
    ap.add_argument('--sweep-experiment', default='depth-sweep')
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exp = experiment_id(args.url, args.sweep_experiment)
    parent = runs(args.url, exp, "tags.`deepvit.kind` = 'sweep'")[0]['info']['run_id']
    child = runs(args.url, exp, "tags.`deepvit.kind` = 'train' and tags.depth = '4'")[0]['info']['run_id']
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path='/usr/bin/chromium', args=ARGS)
        page = browser.new_page(viewport={'width': 1900, 'height': 900})
        page.goto(f'{args.url}/#/experiments/{exp}/runs?{ML}')
        page.wait_for_timeout(5000)
        close_assistant(page)
        pick(page, 'Group by', 'family')
        page.get_by_role('button', name='Columns', exact=True).click()
        page.wait_for_timeout(800)
        for column in ('val/top1', 'val/top1_best', 'depth', 'embed_dim', 'seed'):
            page.get_by_role('dialog').get_by_text(column, exact=True).first.click()
            page.wait_for_timeout(300)
        page.keyboard.press('Escape')
        page.wait_for_timeout(800)
        page.screenshot(path=str(args.out / 'runs_grouped_by_family.png'))

        page.goto(f'{args.url}/#/experiments/{exp}/runs/{child}/system-metrics?{ML}')
        page.wait_for_timeout(6000)
        close_assistant(page)
        page.screenshot(path=str(args.out / 'run_system_metrics.png'))

        page.goto(f'{args.url}/#/experiments/{exp}/runs/{parent}/artifacts?{ML}')
        page.wait_for_timeout(4000)
        close_assistant(page)
        page.get_by_text('analysis', exact=True).first.click()
        page.wait_for_timeout(800)
        page.get_by_text('figures', exact=True).first.click()
        page.wait_for_timeout(800)
        page.get_by_text('top1_vs_depth.png', exact=True).first.click()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(args.out / 'sweep_parent_artifacts.png'))
        browser.close()


if __name__ == '__main__':
    main()
