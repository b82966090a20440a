import {
  BadRequestException, Body, Controller, Get, NotFoundException, Param, ParseIntPipe, Post,
  Query,
} from '@nestjs/common';
import type { Note } from '../generated/prisma/client';
import { NotesService } from './notes.service';

@Controller('notes')
export class NotesController {
  constructor(private readonly notes: NotesService) {}

  @Get()
  list(@Query('tenantId') tenantId?: string): Promise<Note[]> {
    return this.notes.list(tenantId);
  }

  @Get('whoami')
  async whoami(): Promise<{ tenant: string | null }> {
    return { tenant: await this.notes.databaseTenant() };
  }

  @Get(':id')
  async get(@Param('id', ParseIntPipe) id: number): Promise<Note> {
    const note = await this.notes.get(id);
    if (note === null) {
      throw new NotFoundException(`note ${id} not found`);
    }
    return note;
  }

  @Post()
  create(@Body() body: { body?: unknown; tenantId?: unknown }): Promise<Note> {
    if (typeof body.body !== 'string' || body.body === '') {
      throw new BadRequestException('body must be a non-empty string');
    }
    const tenantId = typeof body.tenantId === 'string' ? body.tenantId : undefined;
    return this.notes.create({ body: body.body, tenantId });
  }
}
